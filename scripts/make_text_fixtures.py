#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 for the Rust text-embedding backend's tests.

    scripts/fetch_minilm.sh                     # exports the model to models/minilm
    python3 -m venv /work/venvs/st && /work/venvs/st/bin/pip install -r scripts/requirements-bench.txt
    HF_HUB_OFFLINE=1 /work/venvs/st/bin/python scripts/make_text_fixtures.py [MODEL_DIR]

Loads the exported directory (default models/minilm) with sentence-transformers, offline, and
writes tests/fixtures/minilm_embeddings.json:

    {"model": "all-MiniLM-L6-v2", "max_seq_length": 256, "pooling": "mean", "normalize": true,
     "texts": [{"text": ..., "tokens": N, "input_ids": [...], "embedding": [384 floats]}]}

`tokens` is the number of tokens after truncation, [CLS] and [SEP] included (the attention mask's
sum); `input_ids` are those N ids, to test the tokenizer on its own. Embeddings are what
SentenceTransformer.encode returns: mean pooling then L2 normalisation, as modules.json says.
Each float is written as the shortest decimal that reads back as the same f32.

The texts cover English, accents, CJK, Arabic, emoji, "", whitespace only, mixed case,
punctuation, numbers and one text longer than 256 tokens (truncated). The script checks that each
text encoded alone gives the batch's embedding (padding is masked), that the tokenizer.json read
with the `tokenizers` library alone gives the same ids once truncation is set to 256 and padding
is off (the file itself says truncation 128 and padding to 128: sentence-transformers overrides
both), and that the long text is truncated.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "minilm_embeddings.json"

LONG_TEXT = " ".join(
    f"Sentence number {i} of a long document talks about ships, rivers and mountains; "
    "it keeps going so that the encoder must truncate it."
    for i in range(1, 16)
)

TEXTS = [
    "This is a test sentence.",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The cat sits outside.",
    "I love pasta.",
    "Do you like pizza?",
    "NATS is a messaging system used by the flotilla inference fleet.",
    "",
    "   ",
    "\t\n",
    "Café crème brûlée à la française",
    "naïve résumé: Ångström, Øresund, Straße",
    "日本語のテキストです。",
    "我喜欢机器学习",
    "한국어 문장입니다",
    "مرحبا بالعالم",
    "Привет, мир!",
    "I love Rust 🦀🚀 and coffee ☕",
    "👍",
    "MiXeD CaSe TeXt",
    "THIS IS ALL CAPS",
    "Hello, world!!! (really?) -- yes; [brackets] {braces} <angle> \"quotes\" 'single'",
    "...",
    "Pi is 3.14159, e is 2.71828 and 1,000,000 is a million.",
    "Order #12345 shipped on 2024-06-01 at 13:45 for $99.99",
    "unbelievably antidisestablishmentarianism",
    "https://example.com/path?q=embedding&lang=en",
    LONG_TEXT,
]


def f32(x) -> float:
    """The shortest decimal that reads back as the same f32 (as a Python float)."""
    import numpy as np

    return float(str(np.float32(x)))


def write_fixture(path: Path, header: dict, entries: list[dict]) -> None:
    """Writes {header..., "texts": entries} with one line per text, so diffs stay readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["{"]
    for k, v in header.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    lines.append('  "texts": [')
    body = [
        "    " + json.dumps(e, ensure_ascii=False, separators=(", ", ": ")) for e in entries
    ]
    lines.append(",\n".join(body))
    lines.append("  ]")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(path.read_text(encoding="utf-8"))  # well-formed


def encode_and_check(st, texts: list[str], tokenizer_json: Path, max_seq_length: int) -> list[dict]:
    """Embeddings, token counts and ids of `texts`, checked as the module docstring says."""
    import numpy as np
    from tokenizers import Tokenizer

    batch = st.encode(texts, batch_size=len(texts), convert_to_numpy=True)
    for i, text in enumerate(texts):
        alone = st.encode([text], convert_to_numpy=True)[0]
        diff = float(np.abs(alone - batch[i]).max())
        assert diff < 1e-5, (text, diff)
    features = st.preprocess(texts)
    counts = features["attention_mask"].sum(dim=1).tolist()
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(max_length=max_seq_length)
    tok.no_padding()
    entries = []
    for i, text in enumerate(texts):
        n = int(counts[i])
        ids = features["input_ids"][i, :n].tolist()
        own = tok.encode(text).ids
        assert own == ids, (text, own, ids)
        entries.append({"text": text, "tokens": n, "input_ids": ids,
                        "embedding": [f32(v) for v in batch[i]]})
    return entries


def numpy_forward(model_dir: Path, ids: list[int], cls: bool, normalize: bool):
    """An independent BERT forward pass in float64 from config.json and model.safetensors alone,
    as the Rust backend will do it: embeddings (word + position + token type 0) and LayerNorm,
    then per layer self-attention, residual and LayerNorm, erf-GELU feed-forward, residual and
    LayerNorm; then CLS or mean pooling over the given ids (one unpadded text) and optional L2
    normalisation."""
    import math

    import numpy as np
    from safetensors import safe_open

    try:
        from scipy.special import erf
    except ImportError:
        erf = np.vectorize(math.erf)
    cfg = json.loads((model_dir / "config.json").read_text())
    w = {}
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
        for k in f.keys():
            w[k] = f.get_tensor(k).astype(np.float64)
    eps = cfg["layer_norm_eps"]

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    n = len(ids)
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    heads = cfg["num_attention_heads"]
    d = cfg["hidden_size"] // heads
    for layer in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        q = lin(x, p + "attention.self.query").reshape(n, heads, d).transpose(1, 0, 2)
        k = lin(x, p + "attention.self.key").reshape(n, heads, d).transpose(1, 0, 2)
        v = lin(x, p + "attention.self.value").reshape(n, heads, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(1, 0, 2).reshape(n, heads * d)
        x = ln(lin(a, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
    e = x[0] if cls else x.mean(0)
    if normalize:
        e = e / max(np.linalg.norm(e), 1e-12)
    return e


def main() -> int:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models" / "minilm"
    if not (model_dir / "model.safetensors").is_file():
        print(f"make_text_fixtures: {model_dir} has no model.safetensors; run scripts/fetch_minilm.sh",
              file=sys.stderr)
        return 1
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    names = [type(m).__name__ for m in st]
    assert names == ["Transformer", "Pooling", "Normalize"], names
    max_seq_length = st.max_seq_length
    assert max_seq_length == 256, max_seq_length
    entries = encode_and_check(st, TEXTS, model_dir / "tokenizer.json", max_seq_length)
    dim = len(entries[0]["embedding"])
    assert dim == 384, dim
    longest = max(entries, key=lambda e: e["tokens"])
    assert longest["text"] == LONG_TEXT and longest["tokens"] == max_seq_length, longest["tokens"]
    norms = np.linalg.norm(np.array([e["embedding"] for e in entries]), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), norms

    worst = max(float(np.abs(numpy_forward(model_dir, e["input_ids"], cls=False, normalize=True)
                             - np.array(e["embedding"])).max()) for e in entries)
    assert worst < 1e-4, worst
    print(f"numpy forward pass within {worst:.2e} of sentence-transformers")

    write_fixture(FIXTURE, {"model": "all-MiniLM-L6-v2", "max_seq_length": max_seq_length,
                            "pooling": "mean", "normalize": True}, entries)
    print(f"wrote {FIXTURE.relative_to(ROOT)}: {len(entries)} texts, {dim} dims, "
          f"tokens {min(e['tokens'] for e in entries)}..{longest['tokens']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
