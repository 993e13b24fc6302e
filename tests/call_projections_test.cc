// Tests of CallProjections: request logs, metrics and usage folded from API-call events.
#include <gtest/gtest.h>
