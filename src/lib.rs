//! lakemount: mount Iceberg + Lance training data as plain read-only files.
//!
//! The modules follow the data flow: [`warehouse`] opens storage and the
//! catalog; [`ingest`] reads inputs, stores [`blobs`] (small ones in
//! [`packs`]), computes embeddings with an [`encode::Encoder`], appends to
//! the Lance table ([`vectors`]) and publishes through the Iceberg table
//! ([`catalog`]); [`repack`] rewrites old samples into packs. A [`spec`]
//! resolves to a [`view`] (what one spec directory shows) at an Iceberg
//! snapshot and the Lance version [`snapshot`] pairs with it; the [`fs`]
//! core serves views through the [`cache`] in front of a [`source`], and
//! [`fuse`] is the kernel adapter, [`mount`] the session. [`check`] tests
//! the tables' invariants; [`trust`] is the boundary between table
//! contents and the machine, [`files`] and [`runtime`] between the user's
//! files and other users; [`par`] runs the data-parallel loops. Every
//! fallible public function returns [`Result`] with the one [`Error`]
//! type, whose [`ErrorKind`] sets the process's exit status (the fs core's
//! `FsError` is the errno the kernel gets, and a few leaf parsers return a
//! typed error of their own that converts into it).

pub mod blobs;
pub mod cache;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod content_id;
pub mod daemon;
pub mod encode;
pub mod error;
pub mod files;
pub mod fs;
pub mod fuse;
pub mod ingest;
pub mod layout;
pub mod metrics;
pub mod mount;
pub mod npy;
pub mod packs;
pub mod par;
pub mod repack;
pub mod runtime;
pub mod similar;
pub mod snapshot;
pub mod source;
pub mod spec;
pub mod status;
pub mod storage;
pub mod trust;
pub mod vectors;
pub mod view;
pub mod warehouse;
pub mod watch;

pub use error::{Error, ErrorKind, Result};
