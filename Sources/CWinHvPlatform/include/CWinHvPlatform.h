#ifndef CWINHVPLATFORM_H
#define CWINHVPLATFORM_H

// Microsoft's declarations of the Windows Hypervisor Platform API, for the WHP
// backend (IrqFdWHP, WinHvPlatformTriggers): the functions, WHV_TRIGGER_PARAMETERS,
// WHV_INTERRUPT_CONTROL and the handle types come from the SDK, not from us.
// Elsewhere this module is empty (IrqFdWHP depends on it on Windows only).
//
// Tools/whp-abi-check compiles this header with mingw-w64 and checks every
// call and structure layout the Swift code relies on against it.
#if defined(_WIN32)
#include <windows.h>
#if defined(__MINGW32__)
// mingw-w64 ships the headers with lowercase names (a case-sensitive file
// system finds only those); the Windows SDK's are mixed case.
#include <winhvplatform.h>
#else
#include <WinHvPlatform.h>
#endif
#endif

#endif
