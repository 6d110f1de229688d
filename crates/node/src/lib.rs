//! The parts of shoal-node other crates reuse: the mesh's sans-IO core, which `shoal node` and
//! `simulations/` drive alike (DESIGN section 3: no second implementation).

pub mod mesh;
