//! `shoal live`: the live system (a USB stick or cloud image booting a PC into a mesh node).
//!
//! # Layout
//! - `config`: `shoal.toml` (the default text, its parse, kernel command-line overrides).
//! - `clock`: SNTP at boot (one exchange per server, by hand over UDP) and the clock set from it.
//! - `cloud`: cloud-init user data (NoCloud seed, EC2-style metadata) as shoal.toml.
//! - `disks`: block devices and their labels (FAT, ext, ISO 9660 superblocks read here).
//! - `run`: `shoal live run`, the supervisor: config, disks, identity, clock, `shoal node` as a
//!   child restarted with backoff, the screen.
//! - `screen`: the status page (a pure `render`), for tty1 and the serial console.
pub mod clock;
pub mod cloud;
pub mod config;
pub mod disks;
pub mod run;
pub mod screen;
