// SPDX-License-Identifier: Apache-2.0
#include "bpf_error.hpp"

#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tcptracer
{

namespace
{

constexpr long kTracefsMagic = 0x74726163;

bool IsTracefs(const char *path)
{
	struct statfs st;
	return statfs(path, &st) == 0 && st.f_type == kTracefsMagic;
}

bool TracefsMounted()
{
	return IsTracefs("/sys/kernel/tracing") || IsTracefs("/sys/kernel/debug/tracing");
}

const char *ErrnoName(int err)
{
	switch (err) {
	case EPERM:
		return "EPERM";
	case ENOENT:
		return "ENOENT";
	case ESRCH:
		return "ESRCH";
	case EINTR:
		return "EINTR";
	case E2BIG:
		return "E2BIG";
	case ENOMEM:
		return "ENOMEM";
	case EACCES:
		return "EACCES";
	case EBUSY:
		return "EBUSY";
	case EEXIST:
		return "EEXIST";
	case EINVAL:
		return "EINVAL";
	case ENOSPC:
		return "ENOSPC";
	case ENOTSUP:
		return "ENOTSUP";
	case ENOSYS:
		return "ENOSYS";
	case EAGAIN:
		return "EAGAIN";
	case ETIMEDOUT:
		return "ETIMEDOUT";
	case ENOTRECOVERABLE:
		return "ENOTRECOVERABLE";
	case EPIPE:
		return "EPIPE";
	default:
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
		if (const char *name = strerrorname_np(err))
			return name;
#endif
		return "";
	}
}

// Dropping capabilities (caps.cpp): none of the BPF remedies below apply.
std::string CapabilityHint(const std::string &op, int err)
{
	if (err == EPERM || err == EACCES || err == ENOSYS)
		return "a seccomp filter or security module refused the call: the drop needs "
		       "capget, capset, prctl, rt_sigaction and rt_tgsigqueueinfo (systemd's "
		       "@system-service allows them)";
	if (err == ETIMEDOUT)
		return "every thread must run a handler for signal 33 to drop its own "
		       "capabilities";
	if (op == "drop capabilities: verify")
		return "a thread still holds capabilities it was to drop";
	return "";
}

} // namespace

std::string HintFor(const std::string &op, int err)
{
	if (op.rfind("drop capabilities", 0) == 0)
		return CapabilityHint(op, err);
	if ((err == EPERM || err == EACCES) && geteuid() != 0)
		return "not running as root: run as root, or grant CAP_BPF and CAP_PERFMON (and "
		       "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to attribute sockets opened before "
		       "it "
		       "started; CAP_SYS_ADMIN on kernels before 5.8)";
	if (access("/sys/kernel/btf/vmlinux", R_OK) != 0 && (op == "open" || op == "load"))
		return "this kernel exposes no BTF at /sys/kernel/btf/vmlinux: it needs "
		       "CONFIG_DEBUG_INFO_BTF=y, or the kernel's BTF from a file (btf_path in "
		       "the config, --btf for trace)";
	if (op == "check map sizes")
		return "the BPF object and the addon come from different versions of "
		       "bpf/tcptracer.h: build both again (npm run build)";
	if (op == "open" && err == ENOENT)
		return "the BPF object file is missing: run `npm run build`";
	if (op.rfind("attach", 0) == 0 && err == ENOENT &&
	    op.find("tracepoint/") != std::string::npos && !TracefsMounted())
		return "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing "
		       "(the tracer does this itself when it runs as root)";
	if (op.rfind("attach kprobe/", 0) == 0 || op.rfind("attach kretprobe/", 0) == 0)
		return "this kernel has no kprobes (CONFIG_KPROBES) or not on this function";
	if ((err == EPERM || err == EACCES) && (op == "load" || op.rfind("attach", 0) == 0))
		return "the kernel refused the program although we are root: check "
		       "kernel.unprivileged_bpf_disabled, lockdown mode and seccomp/LSM policy";
	return "";
}

Napi::Error MakeBpfError(Napi::Env env, const std::string &op, int err, const std::string &detail)
{
	if (err < 0)
		err = -err;
	std::string msg = op + " failed: " + std::strerror(err);
	if (!detail.empty())
		msg += " (" + detail + ")";
	std::string hint = HintFor(op, err);
	if (!hint.empty())
		msg += "; " + hint;
	Napi::Error e = Napi::Error::New(env, msg);
	Napi::Object o = e.Value();
	o.Set("name", "BpfError");
	o.Set("op", op);
	o.Set("errno", err);
	o.Set("code", ErrnoName(err));
	if (!hint.empty())
		o.Set("hint", hint);
	return e;
}

} // namespace tcptracer
