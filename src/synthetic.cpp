// filled by the CLI work (issue 2)
#include "flashprefill/synthetic.hpp"
