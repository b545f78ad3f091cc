//! The fuzz harness, briefly, so `cargo test` exercises it: every target for 20,000 inputs of
//! the committed corpus and its mutants, in this process, with the counting allocator's
//! per-input heap budget. The full runs are `scripts/fuzz.sh` (a million inputs each, in child
//! processes that also catch aborts and hangs; figures in docs/reliability.md).

use flotilla_fuzz::alloc::{self, Counting};
use flotilla_fuzz::engine::{self, Budget};
use flotilla_fuzz::{corpus, Target};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const INPUTS: u64 = 20_000;

fn quick(target: Target) {
    // A heap ceiling well above any budget: an input that would reserve gigabytes aborts the
    // test binary (a failure) instead of the machine.
    alloc::set_ceiling(4 << 30);
    engine::quiet_panics();
    let corpus = corpus::load(&corpus::default_dir(), target).unwrap();
    let tally = engine::run_range(
        target,
        &corpus,
        // Not the seed scripts/fuzz.sh uses, so the two cover different inputs.
        0x5eed,
        0..INPUTS,
        Budget::default(),
        false,
        |_| {},
    );
    // The harness silenced panics while it ran: its own findings are reported below.
    let _ = std::panic::take_hook();
    assert_eq!(tally.inputs, INPUTS);
    assert!(
        tally.findings.is_empty(),
        "{} findings for {}, first: {:?} (rebuild it with `flotilla-fuzz run --target {} --seed {} --inputs {}`)",
        tally.findings.len(),
        target.name(),
        tally.findings[0],
        target.name(),
        0x5eed,
        tally.findings[0].index + 1,
    );
    // A harness that never gets past the parser's first check tests nothing.
    assert!(
        tally.accepted * 100 >= INPUTS,
        "only {} of {INPUTS} {} inputs were accepted",
        tally.accepted,
        target.name()
    );
    assert!(alloc::installed(), "the counting allocator is not in use");
}

/// Every input that once broke a target (`fuzz/regressions/<target>/`, see its README)
/// passes its target within the heap budget.
fn regressions(target: Target) -> usize {
    let dir = corpus::default_dir()
        .parent()
        .unwrap()
        .join("regressions")
        .join(target.name());
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        if let Err((kind, message)) = engine::check(target, &input, Budget::default()) {
            panic!(
                "{} fails again: {} {message}",
                path.display(),
                kind.as_str()
            );
        }
        n += 1;
    }
    n
}

/// One test for all four: the heap counters are process-wide, so targets run one at a time.
///
/// On a 64 MiB stack: a debug build's frames are several times a release build's, so inputs
/// nested to the parsers' depth limits overflow a test thread's 2 MiB here although they do
/// not in a release worker; `scripts/fuzz.sh` runs release code on a 2 MiB stack, as a
/// worker thread has.
#[test]
fn every_target_survives_20k_inputs_and_its_regressions() {
    let checked = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            let mut checked = 0;
            for target in Target::ALL {
                quick(target);
                checked += regressions(target);
            }
            checked
        })
        .unwrap()
        .join()
        .expect("the fuzz loop panicked outside a target");
    assert!(checked >= 7, "only {checked} regression inputs found");
}
