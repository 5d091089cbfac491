"""What changed between two storyboard versions, said scene by scene.

Scenes are matched by their stable ids, so "scene 3 moved to position 1" and "scene 2:
6 s → 4 s" come out right whether the edit was made by a rule or by the language model.
"""

from __future__ import annotations

from collections.abc import Collection

from engine.storyboard import Scene, Storyboard, format_seconds

MESSAGES: dict[str, dict] = {
    "en": {
        "title": "Title: “{old}” → “{new}”",
        "audience": "Audience: {old} → {new}",
        "language": "Language: {old} → {new}",
        "aspect": "Aspect ratio: {old} → {new}",
        "style": "Style: {old} → {new}",
        "title_card": "Title card: {old} → {new}",
        "voice": "Voice: {old} → {new}",
        "music": "Music: {old} → {new}",
        "quality": "Quality: {old} → {new}",
        "qualities": {"draft": "draft", "standard": "standard", "high": "high"},
        "default": "the school's default",
        "no_music": "none",
        "removed": "Removed scene {n} ({label})",
        "added": "Added scene {n} ({label})",
        "moved": "Scene {old_n} moved to position {n}",
        "duration": "Scene {n}: {old} → {new}",
        "visual": "Scene {n}: new picture — {new}",
        "narration": "Scene {n}: new narration — {new}",
        "on_screen_text": "Scene {n}: on-screen text “{old}” → “{new}”",
        "image": "Scene {n}: image {old} → {new}",
        "seed": "Scene {n}: new seed (a different take)",
        "total": "Total: {old} → {new}",
        "none": "none",
    },
    "zh": {
        "title": "标题：“{old}” → “{new}”",
        "audience": "对象：{old} → {new}",
        "language": "语言：{old} → {new}",
        "aspect": "画面比例：{old} → {new}",
        "style": "风格：{old} → {new}",
        "title_card": "片头：{old} → {new}",
        "voice": "声音：{old} → {new}",
        "music": "音乐：{old} → {new}",
        "quality": "画质：{old} → {new}",
        "qualities": {"draft": "草稿", "standard": "标准", "high": "高"},
        "default": "学校默认",
        "no_music": "无",
        "removed": "删除了场景 {n}（{label}）",
        "added": "新增场景 {n}（{label}）",
        "moved": "场景 {old_n} 移到第 {n} 位",
        "duration": "场景 {n}：{old} → {new}",
        "visual": "场景 {n}：新画面 — {new}",
        "narration": "场景 {n}：新旁白 — {new}",
        "on_screen_text": "场景 {n}：屏幕文字 “{old}” → “{new}”",
        "image": "场景 {n}：图片 {old} → {new}",
        "seed": "场景 {n}：换了随机种子（重新生成画面）",
        "total": "总时长：{old} → {new}",
        "none": "无",
    },
}
EXCERPT_CHARS = 60


def describe_changes(old: Storyboard, new: Storyboard, moved: Collection[str] = ()) -> list[str]:
    """One line per change, in the new storyboard's language; [] when nothing changed.

    `moved` names scenes known to have moved (a plain "move" edit); otherwise the fewest
    moves that explain the new order are reported."""
    say = MESSAGES.get(new.language, MESSAGES["en"])
    lines: list[str] = []
    for field, key in (("title", "title"), ("audience", "audience"), ("language", "language"),
                       ("aspect", "aspect")):
        if getattr(old, field) != getattr(new, field):
            lines.append(say[key].format(old=getattr(old, field), new=getattr(new, field)))
    if old.style != new.style:
        lines.append(say["style"].format(old=old.style.name, new=new.style.name))
    if old.title_card_seconds != new.title_card_seconds:
        lines.append(say["title_card"].format(old=format_seconds(old.title_card_seconds),
                                              new=format_seconds(new.title_card_seconds)))
    for field in ("voice", "music"):
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            def shown(value: str) -> str:
                return say["no_music"] if value == "none" else value or say["default"]

            lines.append(say[field].format(old=shown(before), new=shown(after)))
    if old.quality != new.quality:
        names = say["qualities"]
        lines.append(say["quality"].format(old=names.get(old.quality, say["default"]),
                                           new=names.get(new.quality, say["default"])))

    old_positions = {scene.id: index for index, scene in enumerate(old.scenes)}
    new_ids = {scene.id for scene in new.scenes}
    for index, scene in enumerate(old.scenes):
        if scene.id not in new_ids:
            lines.append(say["removed"].format(n=index + 1, label=_label(scene)))
    moved = set(moved) or _moved_ids(
        [scene.id for scene in new.scenes if scene.id in old_positions], old_positions)
    for index, scene in enumerate(new.scenes):
        number = index + 1
        if scene.id not in old_positions:
            lines.append(say["added"].format(n=number, label=_label(scene)))
            continue
        before = old.scenes[old_positions[scene.id]]
        if scene.id in moved:
            lines.append(say["moved"].format(old_n=old_positions[scene.id] + 1, n=number))
        lines.extend(_scene_changes(before, scene, number, say))
    if old.total_seconds != new.total_seconds:
        lines.append(say["total"].format(old=format_seconds(old.total_seconds),
                                         new=format_seconds(new.total_seconds)))
    return lines


def _moved_ids(new_order: list[str], old_positions: dict[str, int]) -> set[str]:
    """The fewest scenes whose moving explains the new order: all but a longest run kept in order.

    Moving scene 4 to the front shifts scenes 1-3 too, but only scene 4 was moved.
    """
    positions = [old_positions[scene_id] for scene_id in new_order]
    best: list[list[int]] = []  # best[i]: longest increasing run ending at i (indices)
    for i, position in enumerate(positions):
        run = max((best[j] for j in range(i) if positions[j] < position), key=len, default=[])
        best.append([*run, i])
    kept = set(max(best, key=len, default=[]))
    return {scene_id for i, scene_id in enumerate(new_order) if i not in kept}


def _scene_changes(old: Scene, new: Scene, number: int, say: dict[str, str]) -> list[str]:
    lines = []
    if old.duration != new.duration:
        lines.append(say["duration"].format(n=number, old=format_seconds(old.duration),
                                            new=format_seconds(new.duration)))
    for field in ("visual", "narration"):
        if getattr(old, field) != getattr(new, field):
            lines.append(say[field].format(n=number, new=_excerpt(getattr(new, field))))
    if old.on_screen_text != new.on_screen_text:
        lines.append(say["on_screen_text"].format(
            n=number, old=old.on_screen_text or say["none"], new=new.on_screen_text or say["none"]))
    if old.image != new.image:
        lines.append(say["image"].format(n=number, old=old.image or say["none"],
                                         new=new.image or say["none"]))
    if old.seed != new.seed:
        lines.append(say["seed"].format(n=number))
    return lines


def _label(scene: Scene) -> str:
    return _excerpt(scene.on_screen_text or scene.visual)


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1].rstrip() + "…"
