//! The shared suite for the review queries, operator commands, the alert outbox and the
//! audit's store calls, on both backends (see the parent module).

#[allow(unused_imports)]
use super::*;
