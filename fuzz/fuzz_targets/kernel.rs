//! The kernel programs against their reference model (tests/model): any input becomes packets
//! for the four hooks, run through the loaded programs with BPF_PROG_TEST_RUN and through the
//! model; a difference in any map after any packet, or a packet not passed on unchanged, is a
//! crash (libFuzzer keeps the input). Needs root. libFuzzer's coverage is the model's (the
//! programs run in the kernel), which follows the same branches of the parse.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use wg_model::harness::Harness;

thread_local! {
    // Loaded once: verifying the programs costs more than thousands of inputs.
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new().expect("loading the programs (root needed)"));
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with_borrow_mut(|h| match h.check(data) {
        Ok(Ok(_)) => {}
        Ok(Err(difference)) => panic!("the kernel programs and the model differ {difference}"),
        Err(e) => panic!("the harness failed: {e:#}"),
    })
});
