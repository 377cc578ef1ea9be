//! Creating the container's init without copying the agent.
//!
//! A fork copies the agent's page tables and then COW-faults every page
//! either side writes; in the guest a fork of a 16 MiB process takes ~3 s
//! and each fault ~6 ms. `clone(CLONE_VM | CLONE_VFORK)` instead runs the
//! child in the agent's own memory, on a stack of its own, while the agent
//! waits in the kernel until the child execs or exits (like
//! posix_spawn). The child must therefore not allocate or unwind, and
//! nothing may wait for the agent before the exec: everything is prepared
//! beforehand, and the child's one way back is the report channel.

use std::os::raw::{c_int, c_void};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// The child's stack. The init's code is syscalls and small frames (the
/// largest are 1 KiB path buffers); debug builds need several times what
/// release builds do. All of it is made present at start-up.
const STACK_SIZE: usize = if cfg!(debug_assertions) {
    256 << 10
} else {
    64 << 10
};

/// A stack for the container's init: mapped and touched once at agent
/// start-up (before a template snapshot), reused by every container, with
/// a guard page below it.
pub struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    pub fn new() -> Result<Stack, Errno> {
        let page = 4096;
        let len = STACK_SIZE + page;
        // SAFETY: an anonymous private mapping at an address the kernel
        // picks; the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page is ours (just mapped) and nothing uses it.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(Errno::last());
        }
        Ok(stack)
    }

    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of our own mapping; stacks grow down.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no child can be
        // running on it (spawn returns only once the child left it).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").field("len", &self.len).finish()
    }
}

/// Starts `entry(arg)` as a new process in new `namespaces`, sharing our
/// memory, and returns once it has exec'd or exited.
///
/// # Safety
/// `entry` runs on `stack` in this address space while this process is
/// suspended: it must not allocate, unwind, take locks or return into
/// anything but its caller's exit (returning from `entry` ends the child
/// with that status), and may only touch `arg` and what it points to. The
/// agent must be single-threaded.
pub unsafe fn spawn<T>(
    stack: &mut Stack,
    namespaces: CloneFlags,
    entry: extern "C" fn(*mut c_void) -> c_int,
    arg: &mut T,
) -> Result<Pid, Errno> {
    let flags = namespaces.bits() | libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: the stack is ours and unused (the borrow is exclusive, and
    // every earlier child has left it: CLONE_VFORK returns only then); the
    // caller upholds `entry`'s contract.
    let pid = unsafe { libc::clone(entry, stack.top(), flags, (arg as *mut T).cast()) };
    if pid < 0 {
        return Err(Errno::last());
    }
    Ok(Pid::from_raw(pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};

    struct Shared {
        written: u64,
    }

    extern "C" fn child(arg: *mut c_void) -> c_int {
        // SAFETY: `spawn` passes the `Shared` the test owns; the test is
        // suspended until we exit.
        let shared = unsafe { &mut *arg.cast::<Shared>() };
        shared.written = 42;
        7
    }

    #[test]
    fn the_child_writes_our_memory_and_we_wait_for_it() {
        let mut stack = Stack::new().unwrap();
        let mut shared = Shared { written: 0 };
        // SAFETY: `child` only writes `shared`; test threads never run on
        // our stack.
        let pid = unsafe { spawn(&mut stack, CloneFlags::empty(), child, &mut shared) }.unwrap();
        // CLONE_VFORK: the child is done with our memory by now.
        assert_eq!(shared.written, 42);
        assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 7));
    }
}
