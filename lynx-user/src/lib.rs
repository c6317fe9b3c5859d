//! Lynx's user side as a library: the `lynx` binary is a thin `main` over [`cli`], and the
//! privileged tests drive the same modules directly.
pub mod atomic_file;
pub mod autoscale;
pub mod cli;
pub mod collector;
pub mod command;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod docker;
pub mod follow;
#[cfg(fuzzing)]
pub mod fuzz;
pub mod generate;
pub mod lxd;
pub mod manage;
pub mod model;
pub mod nginx;
pub mod process;
pub mod remote;
pub mod sink;
pub mod stop;
#[cfg(test)]
mod test_support;
pub mod tui;
pub mod unix_http;
pub mod web;
