//! What the crate's own tests share.

/// `PROPTEST_CASES` when set (a long fuzzing run), else `short`: for property tests
/// whose cases touch the disk, so the default run stays quick.
pub(crate) fn fuzz_cases(short: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(short)
}
