// A C target needs one source file; the module is its header (include/CWinHvPlatform.h).
#include "CWinHvPlatform.h"
