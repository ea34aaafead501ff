//! The four official plugins loaded together, in either order, on one plan.
