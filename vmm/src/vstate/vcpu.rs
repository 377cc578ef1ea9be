//! vCPUs: per-vCPU setup and the thread that runs KVM_RUN and routes exits
//! to the port-I/O and MMIO buses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::persist::{self, VcpuState};
use crate::arch::x86_64::{cpuid, interrupts, msr, regs};
use crate::devices::bus::Bus;
use crate::seccomp::{SeccompError, ThreadFilters, ThreadKind};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {0}: {1}")]
    Create(u8, kvm_ioctls::Error),
    #[error("cannot build the CPUID of vCPU {0}: {1}")]
    CpuidTable(u8, cpuid::CpuidError),
    #[error("cannot set CPUID of vCPU {0}: {1}")]
    Cpuid(u8, kvm_ioctls::Error),
    #[error("cannot set MSRs of vCPU {0}: {1}")]
    Msrs(u8, msr::MsrError),
    #[error("cannot set registers of vCPU {0}: {1}")]
    Regs(u8, regs::RegsError),
    #[error("cannot set up the local APIC of vCPU {0}: {1}")]
    Lapic(u8, kvm_ioctls::Error),
    #[error("cannot start the vCPU {0} thread: {1}")]
    Spawn(u8, std::io::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error(transparent)]
    State(#[from] super::persist::StateError),
}

/// Why a vCPU stopped running the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// Asked to stop by the VMM.
    Kicked,
    /// The guest asked for a reset or power-off (KVM system event).
    GuestReset,
    GuestPowerOff,
    /// The guest halted with interrupts off: it will never run again.
    Halted,
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault {
        cpu: u8,
        rip: u64,
    },
    /// KVM could not run or emulate a guest instruction.
    InternalError {
        cpu: u8,
        suberror: u32,
        rip: u64,
        code: Vec<u8>,
        data: Vec<u64>,
    },
    /// The guest crashed (KVM_SYSTEM_EVENT_CRASH).
    Crash {
        cpu: u8,
    },
    /// VM entry failed.
    FailEntry {
        cpu: u8,
        reason: u64,
    },
    /// KVM_RUN itself failed.
    RunFailed {
        cpu: u8,
        errno: i32,
    },
}

impl std::fmt::Display for VcpuStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VcpuStop::Kicked => write!(f, "stopped by the VMM"),
            VcpuStop::GuestReset => write!(f, "guest reset"),
            VcpuStop::GuestPowerOff => write!(f, "guest powered off"),
            VcpuStop::Halted => write!(f, "guest halted"),
            VcpuStop::TripleFault { cpu, rip } => {
                write!(f, "guest triple fault on vCPU {cpu} (RIP {rip:#x})")
            }
            VcpuStop::InternalError {
                cpu,
                suberror,
                rip,
                code,
                data,
            } => {
                let kind = match suberror {
                    1 => "instruction emulation failed",
                    2 => "simultaneous exceptions",
                    3 => "delivery event failed",
                    _ => "internal error",
                };
                write!(f, "KVM internal error on vCPU {cpu}: {kind} (suberror {suberror}) at RIP {rip:#x}, instruction bytes [")?;
                for (i, b) in code.iter().enumerate() {
                    write!(f, "{}{b:02x}", if i == 0 { "" } else { " " })?;
                }
                write!(f, "], data {data:x?}")
            }
            VcpuStop::Crash { cpu } => write!(f, "guest crashed on vCPU {cpu}"),
            VcpuStop::FailEntry { cpu, reason } => {
                write!(
                    f,
                    "VM entry failed on vCPU {cpu} (hardware reason {reason:#x})"
                )
            }
            VcpuStop::RunFailed { cpu, errno } => write!(
                f,
                "KVM_RUN failed on vCPU {cpu}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

/// Everything a vCPU thread needs.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Bus,
    mmio: Bus,
    mem: GuestMemoryMmap,
}

/// The signal that interrupts KVM_RUN so a vCPU thread sees its stop flag.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process: its only job is to
/// make the blocking KVM_RUN return EINTR.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), noop_handler).map_err(|e| e.errno()))
        .map_err(|e| VcpuError::Signal(vmm_sys_util::errno::Error::new(e)))
}

impl Vcpu {
    /// Creates vCPU `id` of `count` and gives it CPUID, MSRs, FPU and LAPIC
    /// state. The boot vCPU additionally needs [`Vcpu::setup_boot_entry`];
    /// the others wait in the in-kernel LAPIC for INIT/SIPI.
    pub fn new(
        vm: &VmFd,
        id: u8,
        count: u8,
        base_cpuid: &CpuId,
        mem: GuestMemoryMmap,
        pio: Bus,
        mmio: Bus,
    ) -> Result<Self, VcpuError> {
        let vcpu = Self::create(vm, id, mem, pio, mmio)?;
        let fd = &vcpu.fd;
        let mut cpuid = base_cpuid.clone();
        cpuid::patch_cpuid(&mut cpuid, id, count).map_err(|e| VcpuError::CpuidTable(id, e))?;
        fd.set_cpuid2(&cpuid).map_err(|e| VcpuError::Cpuid(id, e))?;
        let set = msr::setup_msrs(fd).map_err(|e| VcpuError::Msrs(id, e))?;
        if set < msr::boot_msr_entries().len() {
            log::debug!("vCPU {id}: KVM accepted {set} of the boot MSRs");
        }
        regs::setup_fpu(fd).map_err(|e| VcpuError::Regs(id, e))?;
        interrupts::setup_lapic(fd).map_err(|e| VcpuError::Lapic(id, e))?;
        Ok(vcpu)
    }

    /// A vCPU with KVM's initial state, before boot or saved state.
    fn create(
        vm: &VmFd,
        id: u8,
        mem: GuestMemoryMmap,
        pio: Bus,
        mmio: Bus,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create(id, e))?;
        Ok(Vcpu {
            id,
            fd,
            pio,
            mmio,
            mem,
        })
    }

    /// Creates vCPU `state.id` and loads a saved state into it, instead of
    /// the boot state [`Vcpu::new`] gives.
    pub fn restore(
        kvm: &Kvm,
        vm: &VmFd,
        state: &VcpuState,
        mem: GuestMemoryMmap,
        pio: Bus,
        mmio: Bus,
    ) -> Result<Self, VcpuError> {
        let vcpu = Self::create(vm, state.id, mem, pio, mmio)?;
        persist::restore_vcpu(kvm, &vcpu.fd, state)?;
        Ok(vcpu)
    }

    /// Saves this vCPU's state; it must have stopped running.
    pub fn save(&self, kvm: &Kvm, msr_indices: &[u32]) -> Result<VcpuState, VcpuError> {
        Ok(persist::save_vcpu(kvm, &self.fd, self.id, msr_indices)?)
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    pub fn setup_boot_entry(&self, entry: u64) -> Result<(), VcpuError> {
        regs::setup_boot_vcpu(&self.fd, &self.mem, entry).map_err(|e| VcpuError::Regs(self.id, e))
    }

    /// Starts the vCPU thread. When the vCPU stops for good it sends why on
    /// `stopped` and writes `stopped_evt` so the event loop wakes up.
    ///
    /// The thread first installs its seccomp filter and reports how that
    /// went on `gate`, then waits for the gate to open before its first
    /// KVM_RUN: no guest instruction runs before every thread is confined.
    pub fn spawn(
        self,
        stop: Arc<AtomicBool>,
        stopped: Sender<VcpuStop>,
        stopped_evt: EventFd,
        gate: StartGate,
    ) -> Result<VcpuHandle, VcpuError> {
        let id = self.id;
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let mut vcpu = self;
                gate.confine_and_wait(ThreadKind::Vcpu);
                let reason = vcpu.run_loop(&stop);
                let _ = stopped.send(reason);
                let _ = stopped_evt.write(1);
                vcpu
            })
            .map_err(|e| VcpuError::Spawn(id, e))?;
        Ok(VcpuHandle { handle })
    }

    fn run_loop(&mut self, stop: &AtomicBool) -> VcpuStop {
        loop {
            if stop.load(Ordering::Acquire) {
                self.complete_pending_io();
                return VcpuStop::Kicked;
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => {
                    return VcpuStop::RunFailed {
                        cpu: self.id,
                        errno: e.errno(),
                    }
                }
            };
            match exit {
                VcpuExit::IoIn(port, data) => {
                    if !self.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                }
                VcpuExit::IoOut(port, data) => {
                    self.pio.write(u64::from(port), data);
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !self.mmio.read(addr, data) {
                        data.fill(0);
                    }
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.mmio.write(addr, data);
                }
                VcpuExit::Hlt => return VcpuStop::Halted,
                VcpuExit::Shutdown => {
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    return VcpuStop::TripleFault { cpu: self.id, rip };
                }
                VcpuExit::SystemEvent(kind, _) => {
                    return match kind {
                        KVM_SYSTEM_EVENT_RESET => VcpuStop::GuestReset,
                        KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::GuestPowerOff,
                        KVM_SYSTEM_EVENT_CRASH => VcpuStop::Crash { cpu: self.id },
                        _ => VcpuStop::GuestPowerOff,
                    };
                }
                VcpuExit::FailEntry(reason, _) => {
                    return VcpuStop::FailEntry {
                        cpu: self.id,
                        reason,
                    };
                }
                VcpuExit::InternalError => return self.internal_error(),
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
                other => {
                    log::debug!("vCPU {}: ignoring exit {other:?}", self.id);
                }
            }
        }
    }

    /// Lets KVM finish the I/O exit we last handled (it consumes an MMIO or
    /// port read's data only on the next KVM_RUN) without running guest
    /// code, so the saved registers are those after the instruction.
    fn complete_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Collects what there is to know about an internal error: KVM's data
    /// words and the instruction bytes at RIP, read through the guest's own
    /// page tables.
    fn internal_error(&mut self) -> VcpuStop {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the exit union because
        // the exit reason is KVM_EXIT_INTERNAL_ERROR.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let data = internal.data[..ndata].to_vec();
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let mut code = vec![0u8; 16];
        let read = self
            .fd
            .translate_gva(rip)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| {
                self.mem
                    .read_slice(&mut code, GuestAddress(t.physical_address))
                    .ok()
            });
        if read.is_none() {
            code.clear();
        }
        VcpuStop::InternalError {
            cpu: self.id,
            suberror: internal.suberror,
            rip,
            code,
            data,
        }
    }
}

/// Holds a new VM thread between its seccomp filter and its first guest
/// instruction. Each thread reports on `confined` whether its filter is in;
/// the VMM opens the gate once all have (or sets the stop flag first when
/// one could not, so that none runs the guest).
pub struct StartGate {
    pub filters: Option<Arc<ThreadFilters>>,
    pub confined: Sender<Result<(), SeccompError>>,
    pub open: Arc<Gate>,
}

impl StartGate {
    fn confine_and_wait(self, kind: ThreadKind) {
        let result = self.filters.as_ref().map_or(Ok(()), |f| f.install(kind));
        let _ = self.confined.send(result);
        self.open.wait();
    }
}

/// A one-way gate: threads wait until it is opened, once.
#[derive(Default)]
pub struct Gate {
    opened: Mutex<bool>,
    cond: Condvar,
}

impl Gate {
    pub fn open(&self) {
        *self.opened.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_all();
    }

    fn wait(&self) {
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        while !*opened {
            opened = self.cond.wait(opened).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    handle: JoinHandle<Vcpu>,
}

impl VcpuHandle {
    /// Interrupts KVM_RUN; the thread then sees the stop flag.
    pub fn kick(&self) {
        let _ = self.handle.kill(kick_signal());
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the thread; the vCPU comes back unless the thread panicked.
    pub fn join(self) -> Option<Vcpu> {
        self.handle.join().ok()
    }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE};
    use kvm_ioctls::Kvm;

    use super::*;
    use crate::vstate::memory::create_guest_memory;
    use crate::vstate::vm::create_vm;

    const CODE_START: u64 = 0x10_0000;
    const RESULT_PORT: u16 = 0x10;

    /// 64-bit guest code that runs CPUID for each (leaf, sub-leaf) and
    /// writes EAX, EBX, ECX, EDX to RESULT_PORT, then spins.
    fn cpuid_probe(queries: &[(u32, u32)]) -> Vec<u8> {
        let mut code = Vec::new();
        for (leaf, index) in queries {
            code.push(0xb8); // mov eax, imm32
            code.extend_from_slice(&leaf.to_le_bytes());
            code.push(0xb9); // mov ecx, imm32
            code.extend_from_slice(&index.to_le_bytes());
            code.extend_from_slice(&[0x0f, 0xa2]); // cpuid
            code.extend_from_slice(&[0x89, 0xd6]); // mov esi, edx
            code.push(0xba); // mov edx, imm32
            code.extend_from_slice(&u32::from(RESULT_PORT).to_le_bytes());
            code.push(0xef); // out dx, eax
            code.extend_from_slice(&[0x89, 0xd8, 0xef]); // mov eax, ebx; out
            code.extend_from_slice(&[0x89, 0xc8, 0xef]); // mov eax, ecx; out
            code.extend_from_slice(&[0x89, 0xf0, 0xef]); // mov eax, esi; out
        }
        code.extend_from_slice(&[0xeb, 0xfe]); // jmp $
        code
    }

    /// Runs `queries` on vCPU `id` of `count`, set up the way the builder
    /// sets up vCPUs on this host; None without KVM.
    fn guest_cpuid(id: u8, count: u8, queries: &[(u32, u32)]) -> Option<Vec<[u32; 4]>> {
        let kvm = match Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                eprintln!("skipping: no KVM ({e})");
                return None;
            }
        };
        let mem = create_guest_memory(4 << 20).unwrap();
        let vm = create_vm(&kvm, &mem).unwrap();
        let mut base = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        cpuid::hide_hypercall_features(&mut base);
        mem.write_slice(&cpuid_probe(queries), GuestAddress(CODE_START))
            .unwrap();
        let mut vcpu = Vcpu::new(&vm, id, count, &base, mem, Bus::new(), Bus::new()).unwrap();
        vcpu.setup_boot_entry(CODE_START).unwrap();
        // Secondary vCPUs wait for INIT/SIPI; start this one directly.
        vcpu.fd
            .set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .unwrap();
        let mut words = Vec::new();
        while words.len() < queries.len() * 4 {
            match vcpu.fd.run() {
                Ok(VcpuExit::IoOut(RESULT_PORT, data)) => {
                    words.push(u32::from_le_bytes(data.try_into().unwrap()));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Ok(VcpuExit::InternalError) => panic!("{}", vcpu.internal_error()),
                other => panic!("unexpected exit: {other:?}"),
            }
        }
        Some(words.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
    }

    /// 64-bit guest code: eax = 0; loop { eax += 1; out RESULT_PORT, eax }.
    const COUNTER: &[u8] = &[
        0x31, 0xc0, // xor eax, eax
        0xff, 0xc0, // inc eax
        0xba, 0x10, 0x00, 0x00, 0x00, // mov edx, RESULT_PORT
        0xef, // out dx, eax
        0xeb, 0xf6, // jmp inc
    ];

    /// Runs `vcpu` until it has written `n` values to RESULT_PORT; returns the last.
    fn count(vcpu: &mut Vcpu, n: usize) -> u32 {
        let mut last = 0;
        let mut seen = 0;
        while seen < n {
            match vcpu.fd.run() {
                Ok(VcpuExit::IoOut(RESULT_PORT, data)) => {
                    last = u32::from_le_bytes(data.try_into().unwrap());
                    seen += 1;
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Ok(VcpuExit::InternalError) => panic!("{}", vcpu.internal_error()),
                other => panic!("unexpected exit: {other:?}"),
            }
        }
        last
    }

    /// A guest stopped right after an I/O exit, saved (vCPU, VM and memory
    /// through the snapshot files) and restored into a new VM continues at
    /// the next instruction: it counts on from where it was, not again.
    #[test]
    fn counting_guest_continues_exactly_after_restore() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("skipping: no KVM");
            return;
        };
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let mem_path = dir.as_path().join("memory");
        let mem = create_guest_memory(16 << 20).unwrap();
        let vm = create_vm(&kvm, &mem).unwrap();
        let base = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        mem.write_slice(COUNTER, GuestAddress(CODE_START)).unwrap();
        let mut vcpu = Vcpu::new(&vm, 0, 1, &base, mem.clone(), Bus::new(), Bus::new()).unwrap();
        vcpu.setup_boot_entry(CODE_START).unwrap();
        assert_eq!(count(&mut vcpu, 5), 5);
        vcpu.complete_pending_io();

        let msrs = persist::msrs_to_save(&kvm).unwrap();
        let state = vcpu.save(&kvm, &msrs).unwrap();
        let vm_state = persist::save_vm(&vm).unwrap();
        crate::snapshot::memory::save_memory(&mem, &mem_path).unwrap();
        // Through JSON, as in a snapshot file.
        let state: VcpuState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        let vm_state: persist::VmState =
            serde_json::from_str(&serde_json::to_string(&vm_state).unwrap()).unwrap();
        drop(vcpu);

        let mem2 = crate::snapshot::memory::restore_memory(&mem_path, 16 << 20).unwrap();
        let vm2 = create_vm(&kvm, &mem2).unwrap();
        persist::restore_vm(&vm2, &vm_state).unwrap();
        let mut restored = Vcpu::restore(&kvm, &vm2, &state, mem2, Bus::new(), Bus::new()).unwrap();
        assert_eq!(count(&mut restored, 1), 6);
        assert_eq!(count(&mut restored, 3), 9);
    }

    /// The guest sees our CPUID, not the host's: the second vCPU reports
    /// its own APIC ID, a core level that puts both vCPUs in one package,
    /// and no hypercall-based paravirtual features.
    #[test]
    fn second_vcpu_sees_its_topology_and_no_hypercall_features() {
        let queries = [
            (0, 0),
            (1, 0),
            (0xb, 0),
            (0xb, 1),
            (0xb, 2),
            (0x4000_0001, 0),
        ];
        let Some(r) = guest_cpuid(1, 2, &queries) else {
            return;
        };
        let max_leaf = r[0][0];
        assert_eq!(r[1][1] >> 24, 1, "leaf 1 APIC ID");
        if max_leaf >= 0xb {
            assert_eq!(r[2][3], 1, "x2APIC ID");
            assert_eq!((r[2][2] >> 8) & 0xff, 1, "sub-leaf 0 is the SMT level");
            assert_eq!((r[3][2] >> 8) & 0xff, 2, "sub-leaf 1 is the core level");
            assert_eq!(r[3][1] & 0xffff, 2, "two vCPUs in the package");
            assert_eq!(r[2][3] >> (r[3][0] & 0x1f), 0, "package ID");
            assert_eq!((r[4][2] >> 8) & 0xff, 0, "sub-leaf 2 ends the list");
        }
        let pv_unhalt_ipi_yield = (1 << 7) | (1 << 11) | (1 << 13);
        assert_eq!(
            r[5][0] & pv_unhalt_ipi_yield,
            0,
            "KVM features {:#x}",
            r[5][0]
        );
    }
}
