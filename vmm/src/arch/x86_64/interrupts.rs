//! Local APIC wiring: LINT0 receives the PIC's ExtINT, LINT1 is NMI, as on
//! PC hardware (the kernel checks this in its virtual-wire setup).

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Rewrites LVT0/LVT1 of a LAPIC state.
pub fn wire_lints(state: &mut kvm_lapic_state) {
    let lvt0 = get_reg(state, APIC_LVT0);
    set_reg(state, APIC_LVT0, set_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(state, APIC_LVT1);
    set_reg(state, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
}

pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut state = vcpu.get_lapic()?;
    wire_lints(&mut state);
    vcpu.set_lapic(&state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut s = kvm_lapic_state::default();
        set_reg(&mut s, APIC_LVT0, 0x0001_0700);
        wire_lints(&mut s);
        assert_eq!(get_reg(&s, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&s, APIC_LVT1), 0x400);
    }
}
