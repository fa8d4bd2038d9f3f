//! Coverage points ("sometimes" assertions, as Antithesis calls them): named events in node
//! code that the simulation counts over many seeds. A point that no seed ever reaches means
//! the fault mix never drives the code there, which the simulation's sweep reports.
//!
//! A point is a `tracing` event at DEBUG level on the [`COVERAGE_TARGET`] target with one
//! `point` field; production filters drop it for the price of a level check.

/// The tracing target every coverage point is emitted on.
pub const COVERAGE_TARGET: &str = "flotilla::coverage";

/// Marks that the named interesting event happened, e.g. `coverage!("snapshot_installed")`.
/// Names are `snake_case` and stable: the simulation's report lists them.
#[macro_export]
macro_rules! coverage {
    ($point:literal) => {
        ::tracing::debug!(target: "flotilla::coverage", point = $point)
    };
}
