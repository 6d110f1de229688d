//! Regressions found by fuzzing: one test each, on the input the fuzzer found.
