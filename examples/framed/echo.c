/* echo.c: every message back as it came (wsexec --framed).
 * A record is "TYPE LENGTH\n", LENGTH bytes, "\n".
 * Build: cc -O2 -o echo examples/framed/echo.c */
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
    char type;
    size_t length;
    /* A 'c' record comes last: how the connection ended (CODE REASON). */
    while (scanf("%c %zu", &type, &length) == 2 && getchar() == '\n' && type != 'c') {
        char *payload = malloc(length + 1);
        if (payload == NULL || fread(payload, 1, length + 1, stdin) != length + 1)
            return 1;
        printf("%c %zu\n", type, length);
        fwrite(payload, 1, length, stdout);
        putchar('\n');
        fflush(stdout);
        free(payload);
    }
    return 0;
}
