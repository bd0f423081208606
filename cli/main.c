/* placeholder, replaced below */
#include "alloy.h"
int main(void) { return 0; }
