//! Saving and restoring what KVM holds for a VM: each vCPU's registers,
//! MSRs, LAPIC and pending events, and the VM's in-kernel PICs, IOAPIC,
//! PIT and clock.
//!
//! The order of the restore calls follows what KVM needs: CPUID before
//! anything that depends on features, special registers before the LAPIC
//! (the APIC base lives there), the TSC before the TSC deadline timer, and
//! pending events last so nothing after them clears them.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// KVM's MSR at the TSC; restoring it first keeps the TSC deadline (set
/// later in the same list) relative to the right clock.
const MSR_IA32_TSC: u32 = 0x10;
/// Most MSRs KVM_GET_MSRS is asked for at once.
const MSR_CHUNK: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {what} of vCPU {cpu}: {source}")]
    VcpuGet {
        cpu: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot restore {what} of vCPU {cpu}: {source}")]
    VcpuSet {
        cpu: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot restore MSR {index:#x} of vCPU {cpu}: KVM refused it")]
    MsrRefused { cpu: u8, index: u32 },
    #[error("cannot list the MSRs KVM saves: {0}")]
    MsrList(kvm_ioctls::Error),
    #[error("cannot build an MSR or CPUID list: {0}")]
    Fam(vmm_sys_util::fam::Error),
    #[error("cannot read the VM's {what}: {source}")]
    VmGet {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot restore the VM's {what}: {source}")]
    VmSet {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// `kvm_fpu` as serde can write it (kvm-bindings has no serde for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// Everything KVM keeps for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    /// Present where the host has XSAVE (every VT-x/AMD-V host we target).
    pub xsave: Option<kvm_xsave>,
    pub xcrs: Option<kvm_xcrs>,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
    /// The guest's TSC frequency, so a restore on a host whose TSC runs at
    /// another rate can ask KVM to scale it.
    pub tsc_khz: Option<u32>,
}

/// What the VM (not a vCPU) keeps in KVM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// The MSRs worth saving on this host: every one KVM lists, the TSC first.
pub fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>, StateError> {
    let list = kvm.get_msr_index_list().map_err(StateError::MsrList)?;
    let mut indices: Vec<u32> = list.as_slice().to_vec();
    indices.sort_by_key(|&i| i != MSR_IA32_TSC);
    Ok(indices)
}

/// Reads `indices`, skipping the MSRs this vCPU cannot read (KVM stops a
/// KVM_GET_MSRS at the first one it refuses and says how many it read).
fn read_msrs(fd: &VcpuFd, cpu: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(StateError::Fam)?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|source| StateError::VcpuGet {
                cpu,
                what: "MSRs",
                source,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // The MSR at `read` was refused: skip it and go on after it.
        let consumed = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[consumed..];
    }
    Ok(out)
}

fn get<T>(cpu: u8, what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, StateError> {
    r.map_err(|source| StateError::VcpuGet { cpu, what, source })
}

fn set(cpu: u8, what: &'static str, r: Result<(), kvm_ioctls::Error>) -> Result<(), StateError> {
    r.map_err(|source| StateError::VcpuSet { cpu, what, source })
}

/// Saves vCPU `cpu`, which must not be in KVM_RUN.
pub fn save_vcpu(
    kvm: &Kvm,
    fd: &VcpuFd,
    cpu: u8,
    msr_indices: &[u32],
) -> Result<VcpuState, StateError> {
    let cpuid = get(
        cpu,
        "CPUID",
        fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES),
    )?;
    let mp_state = get(cpu, "MP state", fd.get_mp_state())?;
    let regs = get(cpu, "registers", fd.get_regs())?;
    let sregs = get(cpu, "special registers", fd.get_sregs())?;
    let fpu = FpuState::from(&get(cpu, "FPU state", fd.get_fpu())?);
    let xsave = if kvm.check_extension(Cap::Xsave) {
        Some(get(cpu, "XSAVE state", fd.get_xsave())?)
    } else {
        None
    };
    let xcrs = if kvm.check_extension(Cap::Xcrs) {
        Some(get(cpu, "XCRs", fd.get_xcrs())?)
    } else {
        None
    };
    let debug_regs = get(cpu, "debug registers", fd.get_debug_regs())?;
    let lapic = get(cpu, "LAPIC", fd.get_lapic())?;
    let tsc_khz = kvm
        .check_extension(Cap::GetTscKhz)
        .then(|| fd.get_tsc_khz().ok())
        .flatten();
    let msrs = read_msrs(fd, cpu, msr_indices)?;
    let vcpu_events = get(cpu, "pending events", fd.get_vcpu_events())?;
    Ok(VcpuState {
        id: cpu,
        cpuid: cpuid.as_slice().to_vec(),
        mp_state,
        regs,
        sregs,
        fpu,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        vcpu_events,
        tsc_khz,
    })
}

/// Loads `state` into a freshly created vCPU.
pub fn restore_vcpu(kvm: &Kvm, fd: &VcpuFd, state: &VcpuState) -> Result<(), StateError> {
    let cpu = state.id;
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(StateError::Fam)?;
    set(cpu, "CPUID", fd.set_cpuid2(&cpuid))?;
    if let Some(khz) = state.tsc_khz {
        // Only needed (and only possible) where the host's TSC rate differs.
        let host = fd.get_tsc_khz().ok();
        if host != Some(khz) && kvm.check_extension(Cap::TscControl) {
            set(cpu, "TSC frequency", fd.set_tsc_khz(khz))?;
        }
    }
    set(cpu, "MP state", fd.set_mp_state(state.mp_state))?;
    set(cpu, "registers", fd.set_regs(&state.regs))?;
    set(cpu, "special registers", fd.set_sregs(&state.sregs))?;
    set(cpu, "FPU state", fd.set_fpu(&kvm_fpu::from(&state.fpu)))?;
    if let Some(xsave) = &state.xsave {
        // SAFETY: the buffer is a whole kvm_xsave as KVM_GET_XSAVE returned
        // it; KVM_SET_XSAVE reads exactly that size.
        set(cpu, "XSAVE state", unsafe { fd.set_xsave(xsave) })?;
    }
    if let Some(xcrs) = &state.xcrs {
        set(cpu, "XCRs", fd.set_xcrs(xcrs))?;
    }
    set(cpu, "debug registers", fd.set_debug_regs(&state.debug_regs))?;
    set(cpu, "LAPIC", fd.set_lapic(&state.lapic))?;
    write_msrs(fd, cpu, &state.msrs)?;
    set(
        cpu,
        "pending events",
        fd.set_vcpu_events(&state.vcpu_events),
    )?;
    Ok(())
}

fn write_msrs(fd: &VcpuFd, cpu: u8, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
    for chunk in entries.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(StateError::Fam)?;
        let written = fd.set_msrs(&msrs).map_err(|source| StateError::VcpuSet {
            cpu,
            what: "MSRs",
            source,
        })?;
        if written < chunk.len() {
            return Err(StateError::MsrRefused {
                cpu,
                index: chunk[written].index,
            });
        }
    }
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(|source| StateError::VmGet {
            what: "interrupt controllers",
            source,
        })?;
    Ok(chip)
}

/// Saves the in-kernel interrupt controllers, PIT and clock.
pub fn save_vm(vm: &VmFd) -> Result<VmState, StateError> {
    let vm_get = |what| move |source| StateError::VmGet { what, source };
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(vm_get("PIT"))?,
        clock: vm.get_clock().map_err(vm_get("clock"))?,
    })
}

/// Loads `state` into a VM whose irqchip and PIT exist already.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), StateError> {
    let vm_set = |what| move |source| StateError::VmSet { what, source };
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip)
            .map_err(vm_set("interrupt controllers"))?;
    }
    vm.set_pit2(&state.pit).map_err(vm_set("PIT"))?;
    // KVM_SET_CLOCK takes no flags it reported (TSC_STABLE and friends are
    // read-only facts about the host).
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(vm_set("clock"))?;
    Ok(())
}
