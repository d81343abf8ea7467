//! lakemount: mount Iceberg + Lance training data as plain read-only files.
//!
//! The modules follow the data flow: [`warehouse`] opens storage and the
//! catalog; [`ingest`] reads inputs, stores [`blobs`], computes embeddings
//! with an [`encode::Encoder`], appends to the Lance table ([`vectors`]) and
//! publishes through the Iceberg table ([`catalog`]).

pub mod blobs;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod encode;
pub mod fs;
pub mod fuse;
pub mod ingest;
pub mod layout;
pub mod mount;
pub mod npy;
pub mod similar;
pub mod spec;
pub mod vectors;
pub mod view;
pub mod warehouse;
