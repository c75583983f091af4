//! Tests that mount extentfs for real (root and /dev/fuse required) and compare what they
//! see through the mount against a model or against SOURCE.

mod cli;
mod data;
mod handles;
mod harness;
mod package;
mod posix;
mod reliability;
mod smoke;
mod stats;
mod suites;
