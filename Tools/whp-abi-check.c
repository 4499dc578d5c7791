// The Windows layer against Microsoft's declarations (run by Tools/whp-abi-check).
//
// The Swift code for Windows (IrqFdWHP/WinHvPlatformTriggers.swift,
// IrqFdRelay/WaitPoller.swift) cannot be compiled here. This file is compiled
// with mingw-w64 for x86_64-w64-mingw32 against the same header module
// (Sources/CWinHvPlatform/include/CWinHvPlatform.h) and linked against
// libwinhvplatform.a, with warnings as errors:
//
// - every WHP and Win32 function the Swift code calls is assigned to a
//   function pointer of the type the Swift code assumes (the argument types it
//   passes), then called through it: a different signature in the header is an
//   incompatible-pointer error, a missing export a link error;
// - every structure the Swift code fills in as bytes has its size, field
//   offsets, bit-field positions and enumerator values asserted: the values
//   below are the ones the Swift code writes (WHPTriggerParameters.bytes,
//   WHPInterruptControl.bytes and its enums), which Tests/IrqFdWHPTests/
//   EncodingTests.swift pins byte for byte on every platform.
//
// It is compiled, never run (there is no Windows here).
#include <stddef.h>
#include <stdint.h>

#include "CWinHvPlatform.h"

// MARK: Structures the Swift code fills in.

// WHPTriggerParameters: 32 bytes; TriggerType (UINT32) at 0, Reserved (UINT32)
// at 4, the interrupt (WHV_INTERRUPT_CONTROL) at 8, zeros to the end.
_Static_assert(sizeof(WHV_TRIGGER_PARAMETERS) == 32, "WHPTriggerParameters.size");
_Static_assert(offsetof(WHV_TRIGGER_PARAMETERS, TriggerType) == 0, "TriggerType at 0");
_Static_assert(sizeof(((WHV_TRIGGER_PARAMETERS *)0)->TriggerType) == 4, "TriggerType is a UINT32");
_Static_assert(offsetof(WHV_TRIGGER_PARAMETERS, Reserved) == 4, "Reserved at 4");
_Static_assert(offsetof(WHV_TRIGGER_PARAMETERS, Interrupt) == 8, "Interrupt at 8");
_Static_assert(WHvTriggerTypeInterrupt == 0, "WHPTriggerParameters.interruptTriggerType");
_Static_assert(_Alignof(WHV_TRIGGER_PARAMETERS) <= 8, "the Swift buffer is 8-byte aligned");

// WHPInterruptControl: 16 bytes; a UINT64 of bit fields, Destination (UINT32)
// at 8, Vector (UINT32) at 12.
_Static_assert(sizeof(WHV_INTERRUPT_CONTROL) == 16, "WHPInterruptControl.bytes.count");
_Static_assert(offsetof(WHV_INTERRUPT_CONTROL, Destination) == 8, "Destination at 8");
_Static_assert(sizeof(((WHV_INTERRUPT_CONTROL *)0)->Destination) == 4, "Destination is a UINT32");
_Static_assert(offsetof(WHV_INTERRUPT_CONTROL, Vector) == 12, "Vector at 12");
_Static_assert(sizeof(((WHV_INTERRUPT_CONTROL *)0)->Vector) == 4, "Vector is a UINT32");
_Static_assert(_Alignof(WHV_INTERRUPT_CONTROL) <= 8, "the Swift buffer is 8-byte aligned");

// WHPInterruptControl.InterruptType, .DestinationMode, .TriggerMode raw values.
_Static_assert(WHvX64InterruptTypeFixed == 0, "InterruptType.fixed");
_Static_assert(WHvX64InterruptTypeLowestPriority == 1, "InterruptType.lowestPriority");
_Static_assert(WHvX64InterruptTypeNmi == 4, "InterruptType.nmi");
_Static_assert(WHvX64InterruptTypeInit == 5, "InterruptType.initialize");
_Static_assert(WHvX64InterruptTypeSipi == 6, "InterruptType.sipi");
_Static_assert(WHvX64InterruptTypeLocalInt1 == 9, "InterruptType.localInt1");
_Static_assert(WHvX64InterruptDestinationModePhysical == 0, "DestinationMode.physical");
_Static_assert(WHvX64InterruptDestinationModeLogical == 1, "DestinationMode.logical");
_Static_assert(WHvX64InterruptTriggerModeEdge == 0, "TriggerMode.edge");
_Static_assert(WHvX64InterruptTriggerModeLevel == 1, "TriggerMode.level");

// Handles are pointers (the Swift code keeps their bits in an Int); the
// constants the Swift code spells as numbers.
_Static_assert(sizeof(WHV_PARTITION_HANDLE) == 8 && sizeof(WHV_TRIGGER_HANDLE) == 8, "handles are 64-bit pointers");
_Static_assert(sizeof(HANDLE) == 8, "HANDLE is a 64-bit pointer");
_Static_assert(sizeof(HRESULT) == 4 && (HRESULT)-1 < 0, "HRESULT is a signed 32-bit integer");
_Static_assert(sizeof(DWORD) == 4, "DWORD is 32 bits");
_Static_assert(INFINITE == 0xFFFFFFFFu, "INFINITE is spelled 0xFFFF_FFFF");
_Static_assert(WAIT_OBJECT_0 == 0, "WAIT_OBJECT_0 is spelled 0");
_Static_assert(MAXIMUM_WAIT_OBJECTS == 64, "WaitPoller.capacity is MAXIMUM_WAIT_OBJECTS - 1");

// Bit-field positions cannot be read in a constant expression: the check is
// constant-folded (this file is compiled with -O2) and a mismatch leaves a
// call to a function declared with the error attribute, which fails the build.
extern void bit_field_layout_differs_from_WHPInterruptControl_bytes(void)
    __attribute__((error("WHV_INTERRUPT_CONTROL's bytes differ from WHPInterruptControl.bytes")));

// EncodingTests' control: lowest priority, logical, level, destination
// 0x01020304, vector 0x99 is, in WHPInterruptControl.bytes,
// 01 11 00 00 00 00 00 00  04 03 02 01  99 00 00 00.
// As two little-endian UINT64s: 0x1101 and 0x00000099_01020304.
static inline void check_interrupt_control_bits(void) {
    union {
        WHV_INTERRUPT_CONTROL control;
        uint64_t words[2];
    } u = {0};
    u.control.Type = WHvX64InterruptTypeLowestPriority;
    u.control.DestinationMode = WHvX64InterruptDestinationModeLogical;
    u.control.TriggerMode = WHvX64InterruptTriggerModeLevel;
    u.control.Destination = 0x01020304u;
    u.control.Vector = 0x99u;
    if (u.words[0] != 0x1101u || u.words[1] != 0x0000009901020304u) {
        bit_field_layout_differs_from_WHPInterruptControl_bytes();
    }
}

// MARK: Functions the Swift code calls, with the types it passes.

// WinHvPlatformTriggers.createTrigger: (partition, parameters bytes as
// WHV_TRIGGER_PARAMETERS, &trigger, &event) -> HRESULT.
typedef HRESULT(WINAPI *CreateTrigger)(WHV_PARTITION_HANDLE, const WHV_TRIGGER_PARAMETERS *, WHV_TRIGGER_HANDLE *, HANDLE *);
// WinHvPlatformTriggers.updateTrigger: (partition, parameters, trigger).
typedef HRESULT(WINAPI *UpdateTriggerParameters)(WHV_PARTITION_HANDLE, const WHV_TRIGGER_PARAMETERS *, WHV_TRIGGER_HANDLE);
// WinHvPlatformTriggers.deleteTrigger: (partition, trigger).
typedef HRESULT(WINAPI *DeleteTrigger)(WHV_PARTITION_HANDLE, WHV_TRIGGER_HANDLE);
// WinHvPlatformTriggers.requestInterrupt: (partition, control, UInt32(16)).
typedef HRESULT(WINAPI *RequestInterrupt)(WHV_PARTITION_HANDLE, const WHV_INTERRUPT_CONTROL *, UINT32);

// Win32Event and WaitPoller.
typedef BOOL(WINAPI *CloseHandleCall)(HANDLE);
typedef BOOL(WINAPI *SetEventCall)(HANDLE);
typedef BOOL(WINAPI *ResetEventCall)(HANDLE);
typedef DWORD(WINAPI *WaitForSingleObjectCall)(HANDLE, DWORD);
// WaitPoller.run: (count, &handles[0], bWaitAll false, INFINITE).
typedef DWORD(WINAPI *WaitForMultipleObjectsCall)(DWORD, const HANDLE *, BOOL, DWORD);
// WaitPoller.init: CreateEventW(nil, false (auto-reset), false (unsignalled), nil).
typedef HANDLE(WINAPI *CreateEventWCall)(LPSECURITY_ATTRIBUTES, BOOL, BOOL, LPCWSTR);
// WaitPoller.start: CreateThread(nil, 0, a C function of LPVOID returning DWORD, context, 0, nil).
typedef HANDLE(WINAPI *CreateThreadCall)(LPSECURITY_ATTRIBUTES, SIZE_T, LPTHREAD_START_ROUTINE, LPVOID, DWORD, LPDWORD);
typedef DWORD(WINAPI *GetLastErrorCall)(void);

static DWORD WINAPI thread_body(LPVOID context) {
    (void)context;
    return 0;
}

// Called with null handles: compiled and linked, never run.
int main(void) {
    check_interrupt_control_bits();

    CreateTrigger create = WHvCreateTrigger;
    UpdateTriggerParameters update = WHvUpdateTriggerParameters;
    DeleteTrigger delete_trigger = WHvDeleteTrigger;
    RequestInterrupt request = WHvRequestInterrupt;
    CloseHandleCall close_handle = CloseHandle;
    SetEventCall set_event = SetEvent;
    ResetEventCall reset_event = ResetEvent;
    WaitForSingleObjectCall wait_one = WaitForSingleObject;
    WaitForMultipleObjectsCall wait_many = WaitForMultipleObjects;
    CreateEventWCall create_event = CreateEventW;
    CreateThreadCall create_thread = CreateThread;
    GetLastErrorCall last_error = GetLastError;

    WHV_PARTITION_HANDLE partition = NULL;
    WHV_TRIGGER_PARAMETERS parameters = {0};
    WHV_INTERRUPT_CONTROL control = {0};
    WHV_TRIGGER_HANDLE trigger = NULL;
    HANDLE event = NULL;
    HRESULT result = create(partition, &parameters, &trigger, &event);
    result |= update(partition, &parameters, trigger);
    result |= delete_trigger(partition, trigger);
    result |= request(partition, &control, (UINT32)sizeof control);

    HANDLE wake = create_event(NULL, FALSE, FALSE, NULL);
    HANDLE handles[2] = {wake, event};
    DWORD waited = wait_many(2, handles, FALSE, INFINITE);
    waited |= wait_one(wake, 0);
    BOOL ok = set_event(wake) && reset_event(wake);
    HANDLE thread = create_thread(NULL, 0, thread_body, NULL, 0, NULL);
    ok = ok && close_handle(thread) && close_handle(wake);
    return (int)(result != 0) + (int)waited + (int)ok + (int)last_error();
}
