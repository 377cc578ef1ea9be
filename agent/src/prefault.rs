//! Touching memory at start-up that every container's life touches again.
//! The agent starts before a template snapshot, so a page touched here is
//! present in every clone; touched later, each first touch costs a clone
//! ~6 ms in the guest.

/// Touches `bytes` of this thread's stack below the caller's frame (the
/// host-request buffer and the frames around it live there).
#[inline(never)]
pub fn stack(bytes: usize) {
    const CHUNK: usize = 16 << 10;
    fn touch(left: usize) {
        let mut page = [0u8; CHUNK];
        // The write must happen: the compiler may not elide it.
        std::hint::black_box(&mut page);
        if left > CHUNK {
            touch(left - CHUNK);
        }
    }
    touch(bytes);
}

/// Allocates, touches and frees a heap block of `bytes`: malloc hands the
/// same (now present) memory to the next allocation of that size, such as
/// each read of the container's output.
pub fn heap(bytes: usize) {
    let block = vec![1u8; bytes];
    std::hint::black_box(&block);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::faults;

    #[test]
    fn touched_memory_is_present_afterwards() {
        heap(64 << 10);
        stack(64 << 10);
        let before = faults();
        heap(64 << 10);
        stack(64 << 10);
        assert!(faults() - before < 4, "second touch should not fault");
    }
}
