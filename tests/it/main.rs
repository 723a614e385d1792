//! One integration binary: a module per feature, shared helpers in `support`.

mod admin;
mod auth;
mod cli;
mod crash;
mod damage;
mod delivery;
mod disk;
mod email;
mod feeds;
mod formats;
mod incremental;
mod mqtt;
mod numbers;
mod oauth;
mod pages;
mod pipeline;
mod proxy;
mod recipes;
mod retry;
mod secrets;
mod service;
mod socks;
mod support;
mod targets;
mod tls;
mod watch;
