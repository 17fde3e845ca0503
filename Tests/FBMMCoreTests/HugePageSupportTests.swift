import FBMMCore
import Testing

/// Without a private tmpfs (memfds), huge pages depend on the system's shmem
/// THP setting: a mount that needs them is refused with the line to change.
struct HugePageSupportTests {
    @Test func refusalNamesTheSysfsSetting() {
        let off = ShmemHugePageSupport(global: "never", pmdSize: "inherit")
        let line = off.refusal(for: .always, what: "huge=always")
        #expect(line?.contains("shmem_enabled") == true && line?.contains("echo advise") == true, "\(line ?? "nil")")
        #expect(off.refusal(for: .never, what: "huge=never") == nil)
        #expect(ShmemHugePageSupport(global: "advise", pmdSize: nil).refusal(for: .always, what: "x") == nil)
        #expect(ShmemHugePageSupport(global: "deny", pmdSize: nil).refusal(for: .advise, what: "x") != nil)
        #expect(ShmemHugePageSupport(global: "never", pmdSize: "always").refusal(for: .always, what: "x") == nil)
    }
}
