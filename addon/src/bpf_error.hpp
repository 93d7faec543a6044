// SPDX-License-Identifier: Apache-2.0
#pragma once
#include <napi.h>

#include <string>

namespace tcptracer
{

// A JS Error named "BpfError" that carries the failing step (`op`), the errno
// (`errno`, `code`) and, where the cause is known, what to do about it (`hint`).
Napi::Error MakeBpfError(Napi::Env env, const std::string &op, int err,
			 const std::string &detail = "");

// The remedy for a failure, or "" when there is nothing specific to say.
std::string HintFor(const std::string &op, int err);

} // namespace tcptracer
