// The kernel's BTF from a file (btf_path, trace --btf), for kernels without /sys/kernel/btf/vmlinux.
import { closeSync, openSync, readSync } from 'node:fs'

/** btf_path (or --btf) names no usable BTF file. */
export class BtfFileError extends Error {
  override name = 'BtfFileError'
}

/**
 * A BTF file libbpf can read: raw BTF (like /sys/kernel/btf/vmlinux) or an ELF file with a
 * .BTF section. Checked here so a wrong path is named as such, not as a failed program load.
 */
export function checkBtfFile(file: string): void {
  const fix =
    'btf_path must name the kernel BTF: a raw BTF file (magic 0xeB9F) or an ELF file with a .BTF section'
  let head: Buffer
  try {
    const fd = openSync(file, 'r')
    try {
      head = Buffer.alloc(4)
      readSync(fd, head, 0, 4, 0)
    } finally {
      closeSync(fd)
    }
  } catch (e) {
    throw new BtfFileError(`btf_path ${file}: ${(e as Error).message}; ${fix}`)
  }
  const rawBtf = head.readUInt16LE(0) === 0xeb9f || head.readUInt16BE(0) === 0xeb9f
  const elf = head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))
  if (!rawBtf && !elf) throw new BtfFileError(`btf_path ${file}: not a BTF or ELF file; ${fix}`)
}
