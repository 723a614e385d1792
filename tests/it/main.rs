//! One integration binary: a module per feature, shared helpers in `support`.

mod cli;
mod crash;
mod delivery;
mod pipeline;
mod retry;
mod support;
