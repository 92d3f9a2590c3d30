//! IntelliHealth: a FHIR R4 server in which every resource version is sealed and stored as a
//! content-addressed blob, and the index never sees plaintext.
//!
//! The rooms, top to bottom (see ARCHITECTURE.md for the codemap and each room's invariant):
//! `http` and `admin` (the faces) → `repository` → the domain rooms `auth`, `fhir`, `search`,
//! `vault`, `consent`, `audit` (and `bulk`, the export jobs, beside `repository`) → the seams `index` (IndexStore), `vault::blob` (BlobStore) and `ledger`
//! (Ledger). `config` and `app` wire them; `main` is the CLI. `portal` is the patient portal's
//! embedded assets, OAuth client and demo record.
//!
//! Without the `server` feature only `fhir` and `search` are built: pure functions over JSON,
//! which is all the fuzz targets need.

#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod bulk;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod consent;
#[cfg(feature = "server")]
pub mod cpu;
pub mod fhir;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod index;
#[cfg(feature = "server")]
pub mod ledger;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod portal;
#[cfg(feature = "server")]
pub mod repository;
pub mod search;
#[cfg(feature = "server")]
pub mod vault;
