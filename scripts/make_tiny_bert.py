#!/usr/bin/env python3
"""Builds the tiny random BERT sentence encoders the repo ships, and their reference embeddings.

    python3 -m venv /work/venvs/st && /work/venvs/st/bin/pip install -r scripts/requirements-bench.txt
    HF_HUB_OFFLINE=1 /work/venvs/st/bin/python scripts/make_tiny_bert.py

Writes two complete sentence-transformers directories that differ only in their head:

- models/tiny-bert/      mean pooling, then Normalize (like all-MiniLM-L6-v2)
- models/tiny-bert-cls/  CLS pooling, no Normalize module

and their fixtures tests/fixtures/tiny_bert_embeddings.json and
tests/fixtures/tiny_bert_cls_embeddings.json (same format as tests/fixtures/minilm_embeddings.json,
made by scripts/make_text_fixtures.py).

The model is a BertModel (2 layers, hidden 32, 4 heads, intermediate 64, 64 positions, erf GELU)
with seeded random weights. Every parameter is random, LayerNorm gains and all biases included,
and the weights are larger than BERT's init, so that a Rust forward pass that swaps a LayerNorm's
gain and bias, drops a bias, or ignores the attention mask gives visibly different numbers. The
tokenizer is BERT's (BertNormalizer lowercasing, BertPreTokenizer, WordPiece, [CLS] $A [SEP])
over a small vocabulary made here: specials, ASCII letters, digits and punctuation (also as
##continuations, so every ASCII word tokenizes without [UNK]), a few CJK characters, common
English words and suffixes. Emoji and most non-Latin scripts map to [UNK]. max_seq_length is 32,
so truncation is exercised.

Both directories hold byte-identical model.safetensors and tokenizer.json, so git stores each
blob once. Everything is deterministic; rerunning rewrites identical files (checked by the test of
this script: run it twice and `git status`).

The script checks its work: sentence-transformers loads each directory offline, the embeddings
of each text encoded alone equal those of the whole batch (padding is masked), the tokens count
equals the tokenizer's own count, and a numpy re-implementation of the forward pass from the
safetensors file alone agrees with sentence-transformers.
"""

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import BertConfig, BertModel

from make_text_fixtures import encode_and_check, numpy_forward, write_fixture  # scripts/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent
MEAN_DIR = ROOT / "models" / "tiny-bert"
CLS_DIR = ROOT / "models" / "tiny-bert-cls"
FIXTURES = ROOT / "tests" / "fixtures"
SEED = 20240601
MAX_SEQ_LENGTH = 32
HIDDEN = 32

# ---------------------------------------------------------------------------------------------
# Vocabulary

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
DIGITS = [str(d) for d in range(10)]
PUNCTUATION = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
# CJK ideographs are split one per token by BertNormalizer(handle_chinese_chars); these few are
# in the vocabulary, others become [UNK].
CJK = ["日", "本", "語", "中", "文", "人", "大", "学"]
SUFFIXES = [
    "##s", "##es", "##ed", "##d", "##ing", "##ly", "##er", "##ers", "##est", "##ion", "##tion",
    "##ions", "##ness", "##ment", "##able", "##ful", "##less", "##al", "##y", "##en", "##ize",
    "##ity", "##ous", "##ive", "##ic", "##ist", "##ism", "##th", "##st", "##nd", "##rd", "##'s",
]
WORDS = """
the of and to a in is it you that he was for on are with as i his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name
very through just form sentence great think say help low line differ turn cause much mean before
move right boy old too same tell does set three want air well also play small end put home read
hand port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn plant cover
food sun four between state keep eye never last let thought city tree cross farm hard start might
story saw far sea draw left late run don't while press close night real life few north open seem
together next white children begin got walk example ease paper group always music those both mark
often letter until mile river car feet care second book carry took science eat room friend began
idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl
usual young ready above ever red list though feel talk bird soon body dog family direct pose leave
song measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest reach fast verb sing
listen six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit power
town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
correct able pound done beauty drive stood contain front teach week final gave green oh quick
develop ocean warm free minute strong special mind behind clear tail produce fact street inch
multiply nothing course stay wheel full force blue object decide surface deep moon island foot
system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran
check game shape equate miss brought heat snow tire bring yes distant fill east paint language
among cafe naive fox jumps lazy brown quickly hello embedding model vector search server query
fleet token text rust cat cats weather today tomorrow yesterday
""".split()


def build_vocab() -> list[str]:
    vocab: list[str] = []
    seen: set[str] = set()
    for group in (SPECIALS, LETTERS, DIGITS, PUNCTUATION, CJK,
                  ["##" + c for c in LETTERS + DIGITS], SUFFIXES, WORDS):
        for tok in group:
            if tok not in seen:
                seen.add(tok)
                vocab.append(tok)
    return vocab


def build_tokenizer(vocab: list[str]) -> Tokenizer:
    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(WordPiece(ids, unk_token="[UNK]", continuing_subword_prefix="##",
                              max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(SPECIALS)
    tok.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tok.no_padding()
    return tok


# ---------------------------------------------------------------------------------------------
# Model


def build_model(vocab_size: int) -> tuple[BertConfig, dict[str, torch.Tensor]]:
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        layer_norm_eps=1e-12,
        initializer_range=0.02,
        pad_token_id=0,
        position_embedding_type="absolute",
        architectures=["BertModel"],
    )
    torch.manual_seed(SEED)
    model = BertModel(config)  # with its pooler, like the real MiniLM's checkpoint
    model.eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    # The names HF's BertModel (and so sentence-transformers) uses: no "bert." prefix.
    tensors = {k: v.detach().to(torch.float32).contiguous().clone()
               for k, v in model.state_dict().items()}
    # The real MiniLM checkpoint (saved by an older transformers) also holds this int64 buffer,
    # [0, 1, ..., max_position_embeddings - 1]; ship it too so the Rust loader's handling of a
    # non-f32 tensor is tested here.
    tensors["embeddings.position_ids"] = torch.arange(config.max_position_embeddings,
                                                      dtype=torch.int64).unsqueeze(0)
    return config, tensors


# ---------------------------------------------------------------------------------------------
# Directories

def dump_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def pooling_config(cls: bool) -> dict:
    # The same keys as all-MiniLM-L6-v2's 1_Pooling/config.json.
    return {
        "word_embedding_dimension": HIDDEN,
        "pooling_mode_cls_token": cls,
        "pooling_mode_mean_tokens": not cls,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }


def modules(normalize: bool) -> list[dict]:
    mods = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize",
                     "type": "sentence_transformers.models.Normalize"})
    return mods


def write_dir(out: Path, config: BertConfig, tensors: dict, tokenizer: Tokenizer,
              cls: bool) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # The same keys as all-MiniLM-L6-v2's config.json (less _name_or_path and
    # transformers_version), so a parser written against one reads the other.
    cfg = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "gradient_checkpointing": False,
        "hidden_act": config.hidden_act,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "hidden_size": config.hidden_size,
        "initializer_range": config.initializer_range,
        "intermediate_size": config.intermediate_size,
        "layer_norm_eps": config.layer_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "model_type": "bert",
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": config.position_embedding_type,
        "type_vocab_size": config.type_vocab_size,
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }
    dump_json(out / "config.json", cfg)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # save_file leaves it 0600
    tokenizer.save(str(out / "tokenizer.json"), pretty=False)
    dump_json(out / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": MAX_SEQ_LENGTH,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]", "tokenize_chinese_chars": True, "strip_accents": None,
    })
    dump_json(out / "special_tokens_map.json", {
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    })
    dump_json(out / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    dump_json(out / "modules.json", modules(normalize=not cls))
    dump_json(out / "1_Pooling" / "config.json", pooling_config(cls))
    name = out.name
    (out / "README.md").write_text(
        f"# {name}\n\nA tiny BERT sentence encoder with random weights, for tests only: its embeddings "
        "mean nothing.\nMade by `scripts/make_tiny_bert.py`; reference embeddings in "
        f"`tests/fixtures/{name.replace('-', '_')}_embeddings.json`.\n\n"
        f"{'CLS pooling, no Normalize module.' if cls else 'Mean pooling, then Normalize.'} "
        f"max_seq_length {MAX_SEQ_LENGTH}; vocabulary of {config.vocab_size} WordPiece tokens.\n",
        encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Fixtures

LONG_TEXT = ("The quick brown fox jumps over the lazy dog while the children play music near the "
             "river, and every person in the town reads a story about the weather before night.")
TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "",
    "   ",
    "Café naïve RÉSUMÉ",
    "日本語の文",
    "مرحبا بالعالم",
    "I love rust 🦀🚀!",
    "MiXeD CaSe TeXt",
    "Numbers: 3.14159, 42, and 2024-06-01.",
    "unbelievableness",
    "?!...;;",
    LONG_TEXT,
]


def make_fixture(model_dir: Path, model_name: str, out: Path, cls: bool) -> np.ndarray:
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    assert st.max_seq_length == MAX_SEQ_LENGTH, st.max_seq_length
    names = [type(m).__name__ for m in st]
    assert names == (["Transformer", "Pooling"] if cls else ["Transformer", "Pooling", "Normalize"]), names
    entries = encode_and_check(st, TEXTS, model_dir / "tokenizer.json", MAX_SEQ_LENGTH)
    assert max(e["tokens"] for e in entries) == MAX_SEQ_LENGTH, "no text was truncated"
    assert any(1 in e["input_ids"] for e in entries), "no text produced [UNK]"
    write_fixture(out, {"model": model_name, "max_seq_length": MAX_SEQ_LENGTH,
                        "pooling": "cls" if cls else "mean", "normalize": not cls}, entries)
    return np.array([e["embedding"] for e in entries])


def check_numpy(model_dir: Path, fixture: Path, cls: bool) -> float:
    data = json.loads(fixture.read_text(encoding="utf-8"))
    worst = 0.0
    for entry in data["texts"]:
        ref = np.array(entry["embedding"])
        got = numpy_forward(model_dir, entry["input_ids"], cls=cls, normalize=not cls)
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst < 1e-4, worst
    return worst


def main() -> int:
    vocab = build_vocab()
    tokenizer = build_tokenizer(vocab)
    config, tensors = build_model(len(vocab))
    write_dir(MEAN_DIR, config, tensors, tokenizer, cls=False)
    write_dir(CLS_DIR, config, tensors, tokenizer, cls=True)
    for a in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (MEAN_DIR / a).read_bytes() == (CLS_DIR / a).read_bytes(), a

    mean_fix = FIXTURES / "tiny_bert_embeddings.json"
    cls_fix = FIXTURES / "tiny_bert_cls_embeddings.json"
    mean = make_fixture(MEAN_DIR, "tiny-bert", mean_fix, cls=False)
    cls = make_fixture(CLS_DIR, "tiny-bert-cls", cls_fix, cls=True)
    assert np.allclose(np.linalg.norm(mean, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-2)
    worst = max(check_numpy(MEAN_DIR, mean_fix, cls=False), check_numpy(CLS_DIR, cls_fix, cls=True))

    for d in (MEAN_DIR, CLS_DIR):
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        print(f"{d.relative_to(ROOT)}: {size} bytes")
        assert size < 200_000, size
    print(f"vocabulary {len(vocab)} tokens; numpy forward pass within {worst:.2e} of sentence-transformers")
    print(f"wrote {mean_fix.relative_to(ROOT)} and {cls_fix.relative_to(ROOT)} ({len(TEXTS)} texts each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
