//! The in-cluster half: the per-node agent and the kubectl plugin. It only
//! orchestrates; it never runs apt itself (bootpatch does).
