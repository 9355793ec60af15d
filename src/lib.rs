//! coffer: an encrypted store for a company's confidential documents and cached ERP
//! records, served to its mobile app over mutual TLS.
//!
//! Layers, bottom up: [`secret`] and [`model`] (no I/O), [`crypto`] (KDF, key file,
//! envelope and chunk encryption), [`store`] (redb, typed tables, no plaintext),
//! [`app`] (use cases combining keys and store), and the command line in `cli`.

pub mod admin;
pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod erp;
pub mod http;
pub mod model;
pub mod pki;
pub mod secret;
pub mod sigv4;
pub mod store;
pub mod telemetry;
