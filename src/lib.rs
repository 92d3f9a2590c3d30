//! IntelliHealth: a FHIR R4 server in which every resource version is sealed and stored as a
//! content-addressed blob, and the index never sees plaintext.
//!
//! The rooms, top to bottom (see ARCHITECTURE.md for the codemap and each room's invariant):
//! `http` → `repository` → the domain rooms `fhir`, `search`, `vault` → the seams `index`
//! (IndexStore) and `vault::blob` (BlobStore). `config` and `app` wire them; `main` is the CLI.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod cpu;
pub mod fhir;
pub mod http;
pub mod index;
pub mod metrics;
pub mod repository;
pub mod search;
pub mod vault;
