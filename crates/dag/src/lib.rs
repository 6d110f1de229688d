//! The DAG format of shoal: parsing with located errors, validation, topological order,
//! canonical CBOR, action keys and run records.
//!
//! # Layout
//! - `hash`: [`Hash`], a BLAKE3 digest written `blake3:<64 hex>`.
//! - `json`: a small JSON parser that keeps the line and column of every key and value, because
//!   serde_json stops at the first problem and we report all of them.
//! - `spec`: the typed DAG ([`Dag`], [`Job`], references, outputs, requirements) and the
//!   conversion from located JSON that collects every [`Diagnostic`].
//! - `units`: sizes (`256MiB`) and durations (`1h30m`).
//! - `cbor`: [`canonical_cbor`], the one encoding that is ever hashed.
//! - `record`: [`ResolvedJob`] and its action key, [`RunRecord`] and its signature.
//! - `location`: URLs and `s3://` objects (inputs, upload targets), their pins and redaction.
//! - `sorted_map`: [`SortedMap`], the small map of a job's inputs, outputs and variables.
//! - `runfile`: run files, a Dockerfile-like text for a DAG of one job ([`parse_run_file`]), and
//!   [`parse_any_bytes`], which takes either kind of file.
//!
//! Invariant: this crate does no I/O, reads no clock and draws no random numbers.

#![forbid(unsafe_code)]

mod cbor;
mod diagnostic;
mod hash;
mod json;
pub mod location;
pub mod pin;
mod record;
mod runfile;
mod sorted_map;
mod spec;
mod units;
mod validate;

pub use cbor::{canonical_cbor, from_cbor};
pub use diagnostic::{Diagnostic, Diagnostics, Location, escape_for_terminal};
pub use hash::Hash;
pub use record::{Digest, DigestKind, Exit, Machine, RecordError, ResolvedJob, RunRecord, SignedRecord, Timing};
pub use runfile::{Translated, parse_any_bytes, parse_run_file, translate_any_bytes, translate_run_file};
pub use sorted_map::SortedMap;
pub use location::{S3Object, UploadTarget, UrlPin};
pub use spec::{
    Arch, Dag, FD_OUTPUT_MAX, Gpu, ImageRef, InputRef, Isolation, Job, OutputSpec, PIDS_MAX_DEFAULT, Requirements,
};
pub use units::{parse_duration_ms, parse_size};
pub use validate::{edit_distance, parse_dag, parse_dag_bytes, parse_dag_bytes_warned, parse_dag_warned};
