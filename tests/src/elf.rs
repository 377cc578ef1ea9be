//! Tiny hand-made ELF "kernels" for testing how the VMM reports guests
//! that misbehave: a few instructions at the entry point, nothing else.

use std::path::Path;

const LOAD_ADDR: u64 = 0x100_0000;
const CODE_OFFSET: u64 = 0x1000;

/// Writes an ELF64 executable whose single PT_LOAD segment holds `code`,
/// loaded and entered at 16 MiB.
pub fn write_code_elf(path: &Path, code: &[u8]) {
    let mut f = Vec::new();
    // ELF header
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                              // Program header: PT_LOAD, R+X
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&5u32.to_le_bytes());
    f.extend_from_slice(&CODE_OFFSET.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    f.resize(CODE_OFFSET as usize, 0);
    f.extend_from_slice(code);
    std::fs::write(path, f).unwrap();
}
