//! Search: the official R4 SearchParameters, FHIRPath extraction over them, and the patient
//! compartment. Today it answers "which patients does this resource belong to?"; the query
//! planner over the same registry builds on it.
//!
//! Must not touch storage or keys: it reads resources and returns values.

pub mod codec;
pub mod compartment;
pub mod entries;
pub mod fhirpath;
pub mod keys;
pub mod params;
pub mod plan;
pub mod query;

pub use compartment::Compartment;
