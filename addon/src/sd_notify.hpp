// SPDX-License-Identifier: Apache-2.0
#pragma once
#include <napi.h>

namespace tcptracer
{

// sdNotify(state: string): boolean. Sends `state` (newline-separated KEY=VALUE
// assignments) as one datagram to the AF_UNIX socket named by $NOTIFY_SOCKET,
// read at call time. Returns false when the variable is unset or empty, true
// when the datagram was sent, and throws an Error with `op`, `errno` and `code`
// otherwise.
Napi::Value SdNotify(const Napi::CallbackInfo &info);

} // namespace tcptracer
