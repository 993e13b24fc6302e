// Names for keyledger's own threads, so ps -L, top -H and perf tell them apart.
//
// Thread safety: NameThisThread may be called from any thread; it names only
// the calling one.
#pragma once

namespace keyledger {

// Names the calling thread. Linux keeps 15 bytes of a name; longer names are
// cut there. A failure (no such facility) leaves the name as it was: names
// only serve diagnostics.
void NameThisThread(const char* name);

}  // namespace keyledger
