//! The one definition of "this run is CI", where a test that cannot run
//! (no root, a missing tool) must fail instead of skipping. Every crate's
//! test helpers ask here, so `CI=1` cannot skip in one crate and fail in
//! another. This module reads one environment variable and nothing else;
//! it never decides anything at run time outside tests.

/// Whether a `CI` variable with this value means CI: any value but unset,
/// empty, `0` or `false` (in any case). CI systems set `CI=true`, some
/// `CI=1`; when in doubt a run counts as CI, because a wrongly failed skip
/// is seen and a wrongly allowed one is not.
pub fn means_ci(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None | Some("") | Some("0") => false,
        Some(v) => !v.eq_ignore_ascii_case("false"),
    }
}

/// Whether this process runs under CI (see [`means_ci`]).
pub fn on_ci() -> bool {
    means_ci(std::env::var("CI").ok().as_deref())
}

#[cfg(test)]
mod tests {
    use super::means_ci;

    #[test]
    fn ci_1_and_ci_true_both_forbid_skipping_and_unset_or_false_do_not() {
        for yes in ["true", "1", "TRUE", "yes"] {
            assert!(means_ci(Some(yes)), "CI={yes}");
        }
        for no in [None, Some(""), Some("0"), Some("false"), Some("False")] {
            assert!(!means_ci(no), "CI={no:?}");
        }
    }
}
