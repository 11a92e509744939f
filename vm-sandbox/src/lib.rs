//! The Sandbox seam: run one process in a root filesystem, and its backends.
