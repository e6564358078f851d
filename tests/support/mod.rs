//! Test support: a real `redis-server` per test, a counting fake MES, the simulator and
//! the gateway on port 0, and a small HTTP client.
#![allow(dead_code)]

pub mod client;
pub mod cluster;
pub mod fake_mes;
pub mod gateway;
pub mod process;
pub mod redis;
pub mod sentinel;
