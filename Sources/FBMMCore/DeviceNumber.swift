// Device numbers as the kernel writes them in /proc (mountinfo's and
// maps' "MAJOR:MINOR") and as stat(2) returns them (st_dev).

/// glibc's makedev(3), which Swift does not import (it is a macro).
public func makeDevice(major: UInt64, minor: UInt64) -> UInt64 {
    ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
}

/// "fd:01" (maps: hexadecimal) as st_dev, or nil.
public func deviceNumber(hexPair text: Substring) -> UInt64? {
    let parts = text.split(separator: ":")
    guard parts.count == 2, let major = UInt64(parts[0], radix: 16), let minor = UInt64(parts[1], radix: 16) else { return nil }
    return makeDevice(major: major, minor: minor)
}
