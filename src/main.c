#include <stdio.h>
int main(void)
{
    puts("outboxd " OUTBOXD_VERSION);
    return 0;
}
