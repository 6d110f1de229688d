//! The parts of shoal-node other crates reuse: the mesh's libp2p transport (the protocol it
//! carries is the sans-IO crate `shoal-mesh`, which `shoal node` and `simulations/` drive
//! alike), and the explorer's parsers of outside bytes (its catalogue and its run requests),
//! which the binary's explorer and the fuzz targets (`crates/fuzz-entry`) call alike.

pub mod api_error;
pub mod clock;
pub mod human;
pub mod mesh;

/// The Program Explorer's parsers; its routes and run pipeline are in the binary.
pub mod explorer {
    pub mod catalogue;
    pub mod request;
}
