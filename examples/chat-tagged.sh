#!/bin/sh
# chat-tagged.sh: a chat room in one shared process. wsexec tags every line
# with the client's id; "*<TAB>..." goes to everyone.
#   wsexec --port 8080 --shared --tagged examples/chat-tagged.sh
tab=$(printf '\t')
while IFS= read -r line; do
    id=${line%%"$tab"*}
    case $id in
        +*) printf '*\t* %s joined\n' "${id#+}" ;;
        -*) printf '*\t* %s left\n' "${id#-}" ;;
        *) printf '*\t%s: %s\n' "$id" "${line#*"$tab"}" ;;
    esac
done
