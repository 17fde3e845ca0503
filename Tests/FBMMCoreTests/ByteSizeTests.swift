import Testing
@testable import FBMMCore

@Suite struct ByteSizeTests {
    static let valid: [(String, UInt64)] = [
        ("4096", 4096),
        ("64K", 64 << 10),
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1T", 1 << 40),
        ("1GiB", 1 << 30),
        ("10MB", 10 << 20),
        ("64k", 64 << 10),
        (" 8K ", 8 << 10),
        ("0", 0),
    ]

    @Test(arguments: valid)
    func parsesValidSizes(text: String, bytes: UInt64) throws {
        #expect(try ByteSize(parsing: text).bytes == bytes)
    }

    @Test(arguments: ["", "x", "1.5G", "-1", "1Q", "99999999999T", "K", "B", "G1", "1 G", "18446744073709551616"])
    func refusesInvalidSizes(text: String) {
        #expect(throws: ByteSize.ParseError.invalid(text)) { try ByteSize(parsing: text) }
    }

    @Test func parseErrorNamesTheText() {
        let error = ByteSize.ParseError.invalid("1Q")
        #expect(error.description.contains("'1Q'"))
    }

    static let spellings: [(UInt64, String)] = [
        (0, "0"),
        (4096, "4K"),
        (4097, "4097"),
        (64 << 10, "64K"),
        (64 << 20, "64M"),
        (3 << 30, "3G"),
        (1 << 40, "1T"),
        (1536 << 10, "1536K"),
    ]

    @Test(arguments: spellings)
    func describesShortestExactSpelling(bytes: UInt64, text: String) throws {
        let size = ByteSize(bytes: bytes)
        #expect(size.description == text)
        #expect(try ByteSize(parsing: size.description) == size)
    }

    @Test func ordersByBytes() {
        #expect(ByteSize(bytes: 1) < ByteSize(bytes: 2))
        #expect(!(ByteSize(bytes: 2) < ByteSize(bytes: 2)))
    }
}

@Suite struct ParseCPUListTests {
    static let lists: [(String, [Int])] = [
        ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
        ("", []),
        ("5", [5]),
        ("0-2\n", [0, 1, 2]),
        ("0,2", [0, 2]),
    ]

    @Test(arguments: lists)
    func parses(text: String, expected: [Int]) {
        #expect(parseCPUList(text) == expected)
    }
}
