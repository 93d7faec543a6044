// SPDX-License-Identifier: Apache-2.0
#pragma once
#include <napi.h>

namespace tcptracer
{

// dropCapabilities(keep: bigint) -> { before, after, bounding, boundingDropped, threads }.
// Every thread of the process keeps only the capabilities in `keep` it holds
// (effective = permitted), with empty inheritable and ambient sets, no_new_privs
// set and, where CAP_SETPCAP allows, the bounding set reduced to `keep`. Checked
// afterwards in /proc/self/task/*/status; throws a BpfError (op "drop
// capabilities: ...") when a step fails.
Napi::Value DropCapabilities(const Napi::CallbackInfo &info);

// bpfNeedsCapability() -> boolean: whether bpf() commands on file descriptors
// the process already holds (map reads, updates, deletes, object info) need
// CAP_BPF or CAP_SYS_ADMIN on this kernel.
Napi::Value BpfNeedsCapability(const Napi::CallbackInfo &info);

} // namespace tcptracer
