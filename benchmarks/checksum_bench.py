"""How fast checkpoint checksums can be computed here: stdlib digests over one file, one core, then the chunked
CRC-32 that checkpoint.py uses (threads share the chunks).

    python benchmarks/checksum_bench.py                 # a 1 GiB temporary file (read from the page cache)
    python benchmarks/checksum_bench.py --file PATH     # a real checkpoint file
"""
import argparse
import hashlib
import os
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoint as ckpt  # noqa: E402


class Running:
    """zlib.crc32 / adler32 with hashlib's update() interface."""

    def __init__(self, fn, start):
        self.fn, self.value = fn, start

    def update(self, data):
        self.value = self.fn(data, self.value)


METHODS = {"crc32": lambda: Running(zlib.crc32, 0), "adler32": lambda: Running(zlib.adler32, 1),
           "sha256": hashlib.sha256, "sha1": hashlib.sha1, "blake2b": hashlib.blake2b, "md5": hashlib.md5}


def one_core(path: str, make) -> float:
    buffer = bytearray(16 << 20)
    view, digest, start = memoryview(buffer), make(), time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return os.path.getsize(path) / (time.perf_counter() - start) / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", help="file to hash (default: a temporary file of --gib GiB of random bytes)")
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    path = args.file
    if path is None:
        handle, path = tempfile.mkstemp(suffix=".bin")
        with os.fdopen(handle, "wb") as f:
            for _ in range(int(args.gib * 64)):
                f.write(os.urandom(16 << 20))
    try:
        one_core(path, METHODS["crc32"])  # warm the page cache
        for name, make in METHODS.items():
            print(f"{name:8s} one core      {one_core(path, make):6.0f} MB/s")
        folder, name = os.path.split(os.path.abspath(path))
        start = time.perf_counter()
        ckpt.digests(folder, [name])
        print(f"checkpoint.digests ({ckpt._hash_threads()} threads, {ckpt.CHUNK_BYTES >> 20} MiB chunks) "
              f"{os.path.getsize(path) / (time.perf_counter() - start) / 1e6:6.0f} MB/s")
    finally:
        if args.file is None:
            os.remove(path)


if __name__ == "__main__":
    main()
