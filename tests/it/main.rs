//! End-to-end tests of the `shoal` binary: real sandboxes, a real store, real images.
//! Each test gets its own `SHOAL_HOME`. The binary is the one `cargo build --workspace` made.

mod api_security;
mod architecture;
mod cli;
mod data;
mod emulation;
mod explorer;
mod federation;
mod federation_blobs;
mod federation_nat;
mod federation_readme;
mod federation_scale;
mod fedlab;
mod gpu;
mod hardening;
mod held_home;
mod incremental;
mod live;
mod live_run;
mod load;
mod memory;
mod mesh;
mod mesh_clocks;
mod microvm;
mod netlab;
mod runner;
mod support;
mod provenance;
mod why;
