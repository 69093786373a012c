#![no_std]
//! HEP codec shared by the kernel and userspace paths of hepfwd.
