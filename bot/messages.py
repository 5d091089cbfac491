"""What the bot says, in English and Chinese. Every platform says the same sentences."""

from __future__ import annotations

SAY: dict[str, dict[str, str]] = {
    "en": {
        "help": (
            "I turn a request into a short lesson video. Write what you want, e.g. "
            "“Explain photosynthesis to grade 7 in 30 seconds”, then change it by replying "
            "in this thread (“make scene 2 shorter”). Send a photo with “scene 3” to use it in "
            "that scene.\nCommands: {commands}."),
        "commands": ("help · new [request] · show · render · preview · cancel · videos · "
                     "queue · link VIDEO · revoke LINK · remix VIDEO"),
        "not_your_video": ("“{video}” is not one of your videos; “videos” lists them with "
                           "their ids."),
        "new_link": "A new share link to “{title}” (opens for {days} days): {url}",
        "revoked": "That link no longer opens; other links to the video still do.",
        "revoked_already": "That link was already revoked.",
        "bad_link": "That is not a share link of ours, or it has expired.",
        "remixed": "Remixed from “{title}” ({video}) as a new storyboard here:",
        "needs_argument": "Say which: “{name} {example}”.",
        "new_started": "Started a new storyboard here; tell me what video to make.",
        "working": "Working on it…",
        "quota_used": ("You have used {used} of your {limit} render minutes for today; the "
                       "quota resets at {resets} (in about {hours} h). Previews still work."),
        "students_only_watch": ("Videos are made by teachers here; you can watch the ones they "
                                "share with you through their links."),
        "too_many_jobs": ("You already have {count} videos waiting or rendering; the limit is "
                          "{limit}. The next one can go when one of them is done."),
        "blocked": ("I can't make that: it touches on {category}, which is not suitable for "
                    "a lesson video for students. Please change the request and try again."),
        "blocked_render": ("I can't render version {version}: {where} touches on {category}, "
                           "which is not suitable for students. Change it and try again."),
        "category_violence": "violence",
        "category_sexual": "sexual content",
        "category_self_harm": "self-harm",
        "category_hate": "hate",
        "category_personal_data": "a student's personal data",
        "category_other": "content unsuitable for students",
        "thread_busy": ("I am still working on an earlier message in this thread; please send "
                        "this one again in a minute."),
        "nothing_yet": "There is no storyboard here yet; tell me what video to make.",
        "stale_button": ("That button has expired. Type “show” to see the current "
                         "storyboard."),
        "old_version": "This card shows version {version}; the newest is {latest}.",
        "busy_rendering": ("Version {version} is already being rendered here; wait for it, "
                           "or cancel it first."),
        "queue_full": ("The render queue is full ({queued} videos waiting); please try again "
                       "in a few minutes."),
        "llm_busy": ("The language model is busy with other teachers' requests; please send "
                     "your message again in a minute."),
        "queued": "Version {version} is queued: {ahead}, about {eta}.",
        "queued_preview": "A quick preview of version {version} is queued: {ahead}, about {eta}.",
        "ahead_none": "next in line",
        "ahead_one": "1 video ahead of it",
        "ahead_many": "{count} videos ahead of it",
        "starting": "Rendering version {version}: starting…",
        "progress_steps": "Rendering version {version}: scene {scene}/{scenes}, step "
                          "{step}/{steps} ({percent}%)",
        "progress": "Rendering version {version}: {percent}%",
        "live_preview": ("Live preview of scene {scene}/{scenes} at step {step}/{steps}: rough "
                         "and blurry on purpose; the video will be sharp."),
        "done_status": "Rendered version {version}.",
        "done": "Your video is ready: {title} ({total}).",
        "done_preview": "Your preview is ready: {title} ({total}). Press Render for the full "
                        "video.",
        "link": "Share link (opens for {days} days): {url}",
        "too_big_to_upload": "The video is too large to send here; open it with the link.",
        "failed": "The render of version {version} failed: {message}",
        "cancelled": "The render of version {version} was cancelled; nothing was saved.",
        "cancel_sent": "Cancelling the render of version {version}…",
        "nothing_to_cancel": "Nothing is rendering here.",
        "queue_empty": "The render queue is empty.",
        "bundle": "For editing (storyboard, scene clips, narration, captions): {url}",
        "role_admins_only": "Only admins may change who is a teacher or a student.",
        "role_admin_in_settings": ("Admins are named in the settings file ([roles] admins), "
                                   "not in the chat; ask your IT contact."),
        "role_usage": ("Write “role teacher slack:U123” (or student; in Slack "
                       "“role student @someone” works too), “role remove slack:U123” to let the "
                       "settings decide again, or “role” to list the changes made in chat."),
        "role_set": "{who} is now {role}.",
        "role_removed": "{who} has the role the settings give again.",
        "role_from_settings": ("{who} is an admin in the settings file; change it there, not in "
                               "the chat."),
        "role_list": "Roles changed in chat:",
        "role_none": "No roles were changed in chat; the settings decide for everyone.",
        "role_admin": "an admin",
        "role_teacher": "a teacher",
        "role_student": "a student",
        "workers_none": "No render worker is running: renders wait until IT starts one "
                        "('lessonreel worker'; 'lessonreel doctor --role worker' says what is "
                        "missing).",
        "worker_line": "🖥 {host} · {renderer} · {gpu} · {doing}",
        "worker_gpu": "{name}, {used} of {total} GB in use, {temperature} °C",
        "worker_cpu": "no GPU (CPU animatics)",
        "worker_rendering": "rendering {job}",
        "worker_idle": "idle",
        "worker_waiting": "waiting: {why}",
        "queue_status": "{queued} waiting, {running} rendering.",
        "queue_yours_waiting": "Your render (version {version}) is {ahead}, about {eta}.",
        "queue_yours_running": "Your render (version {version}) is rendering now.",
        "no_videos": "You have no videos yet.",
        "videos": "Your videos:",
        "edit_prompt": ("Reply in this thread with your change, e.g. “make scene 2 "
                        "shorter” or “scene 3: show a leaf under a microscope”."),
        "image_added": "Scene {scene} will use your image.",
        "image_needs_board": "Send your request first; then send the image for a scene.",
        "image_no_scene": "Scene {scene} does not exist; this storyboard has {count} scenes.",
        "image_too_large": ("That image is {size} MB; the limit is {limit} MB. Please send a "
                            "smaller one."),
        "image_unreadable": ("I could not read that image. Send a JPEG, PNG or WebP photo."),
        "unsupported_file": ("I can only use images (JPEG, PNG or WebP) in a scene; “{name}” "
                             "is not one. Write your changes as text."),
        "unknown_command": "I don't know “{name}”. Commands: {commands}.",
        "no_access": ("I can't post in this channel. Invite me with “/invite @lessonreel”, or "
                      "write to me directly."),
        "internal": ("Sorry, something went wrong on my side; nothing was lost. Please try "
                     "again, and tell your IT contact if it keeps happening."),
        "card_title": "{title} · {audience} · {total} · {aspect} · version {version}",
        "card_scene": "{number}. {seconds} s — {visual}",
        "card_narration": "🗣 {narration}",
        "card_image": "🖼 image: {image}",
        "button_render": "Render",
        "button_preview": "Preview",
        "preview_word": "preview",
        "button_edit": "Edit",
        "button_cancel": "Cancel",
        "edit_scene_title": "Edit scene {scene}",
        "edit_visual": "What we see",
        "edit_narration": "What is said",
        "edit_seconds": "Seconds",
        "minutes": "{count} min",
        "seconds": "{count} s",
    },
    "zh": {
        "help": (
            "我能把你的要求做成一段简短的教学视频。直接写下需要，例如“用30秒给初一学生讲解光合作用”，"
            "然后在这个话题里回复修改（“场景2短一点”）。发送图片并写上“场景3”，就会用在该场景。\n"
            "命令：{commands}。"),
        "commands": ("帮助 · 新建 [要求] · 查看 · 渲染 · 预览 · 取消 · 我的视频 · 队列 · "
                     "链接 视频 · 撤销 链接 · 翻新 视频"),
        "not_your_video": "“{video}”不是你的视频；“我的视频”会列出它们的编号。",
        "new_link": "“{title}”的新分享链接（{days} 天内有效）：{url}",
        "revoked": "该链接已失效；这个视频的其他链接仍然有效。",
        "revoked_already": "该链接已经撤销过了。",
        "bad_link": "这不是我们的分享链接，或已过期。",
        "remixed": "已在这里根据“{title}”（{video}）新建分镜：",
        "needs_argument": "请说明是哪一个：“{name} {example}”。",
        "new_started": "已在这里新建分镜；请说说要做什么视频。",
        "working": "正在处理…",
        "quota_used": ("你今天已用 {used} 分钟渲染时间，上限 {limit} 分钟；配额将在 {resets}"
                       "（约 {hours} 小时后）重置。预览仍可使用。"),
        "students_only_watch": "这里的视频由老师制作；你可以通过老师分享的链接观看。",
        "too_many_jobs": ("你已有 {count} 个视频在排队或渲染，上限是 {limit} 个。"
                          "等其中一个完成后再试。"),
        "blocked": "无法制作：内容涉及{category}，不适合给学生的教学视频。请修改要求后再试。",
        "blocked_render": ("无法渲染第 {version} 版：{where}涉及{category}，不适合学生。"
                           "请修改后再试。"),
        "category_violence": "暴力",
        "category_sexual": "色情内容",
        "category_self_harm": "自我伤害",
        "category_hate": "仇恨",
        "category_personal_data": "学生的个人信息",
        "category_other": "不适合学生的内容",
        "thread_busy": "我还在处理这个话题里之前的消息；请一分钟后再发一次。",
        "nothing_yet": "这里还没有分镜；请说说要做什么视频。",
        "stale_button": "这个按钮已失效。输入“查看”可看到当前分镜。",
        "old_version": "这张卡片是第 {version} 版；最新是第 {latest} 版。",
        "busy_rendering": "第 {version} 版正在渲染；请等它完成，或先取消。",
        "queue_full": "渲染队列已满（{queued} 个视频在等待）；请过几分钟再试。",
        "llm_busy": "语言模型正忙于其他老师的请求；请一分钟后再发一次。",
        "queued": "第 {version} 版已排队：{ahead}，约 {eta}。",
        "queued_preview": "第 {version} 版的快速预览已排队：{ahead}，约 {eta}。",
        "ahead_none": "下一个就是它",
        "ahead_one": "前面还有 1 个视频",
        "ahead_many": "前面还有 {count} 个视频",
        "starting": "正在渲染第 {version} 版：开始…",
        "progress_steps": "正在渲染第 {version} 版：场景 {scene}/{scenes}，步骤 {step}/{steps}"
                          "（{percent}%）",
        "progress": "正在渲染第 {version} 版：{percent}%",
        "live_preview": ("场景 {scene}/{scenes} 的实时预览（步骤 {step}/{steps}）："
                         "粗略模糊是正常的，成片会清晰。"),
        "done_status": "第 {version} 版已渲染完成。",
        "done": "视频做好了：{title}（{total}）。",
        "done_preview": "预览做好了：{title}（{total}）。按“渲染”生成完整视频。",
        "link": "分享链接（{days} 天内有效）：{url}",
        "too_big_to_upload": "视频太大，无法在这里发送；请用链接打开。",
        "failed": "第 {version} 版渲染失败：{message}",
        "cancelled": "第 {version} 版的渲染已取消，没有保存任何内容。",
        "cancel_sent": "正在取消第 {version} 版的渲染…",
        "nothing_to_cancel": "这里没有正在渲染的视频。",
        "queue_empty": "渲染队列是空的。",
        "bundle": "编辑用素材（分镜、分场景片段、旁白、字幕）：{url}",
        "role_admins_only": "只有管理员可以更改谁是老师或学生。",
        "role_admin_in_settings": ("管理员只能在设置文件（[roles] admins）中指定，不能在聊天中"
                                   "指定；请联系 IT 人员。"),
        "role_usage": ("请写“角色 教师 slack:U123”（或 学生；在 Slack 里也可以写"
                       "“角色 学生 @某人”），“角色 移除 slack:U123”恢复由设置决定，或只写“角色”"
                       "列出在聊天中做过的更改。"),
        "role_set": "{who} 现在是{role}。",
        "role_removed": "{who} 的角色重新由设置决定。",
        "role_from_settings": "{who} 在设置文件里是管理员；请在那里修改，而不是在聊天中。",
        "role_list": "在聊天中更改过的角色：",
        "role_none": "聊天中没有更改过角色；所有人的角色由设置决定。",
        "role_admin": "管理员",
        "role_teacher": "老师",
        "role_student": "学生",
        "workers_none": "没有正在运行的渲染进程：渲染会一直排队，直到 IT 启动一个"
                        "（'lessonreel worker'；'lessonreel doctor --role worker' 会说明缺什么）。",
        "worker_line": "🖥 {host} · {renderer} · {gpu} · {doing}",
        "worker_gpu": "{name}，已用 {used} / {total} GB，{temperature} °C",
        "worker_cpu": "无 GPU（CPU 动画稿）",
        "worker_rendering": "正在渲染 {job}",
        "worker_idle": "空闲",
        "worker_waiting": "等待中：{why}",
        "queue_status": "{queued} 个在等待，{running} 个正在渲染。",
        "queue_yours_waiting": "你的渲染（第 {version} 版）：{ahead}，约 {eta}。",
        "queue_yours_running": "你的渲染（第 {version} 版）正在进行。",
        "no_videos": "你还没有视频。",
        "videos": "你的视频：",
        "edit_prompt": "请在这个话题里回复修改，例如“场景2短一点”或“场景3：显微镜下的叶片”。",
        "image_added": "场景 {scene} 将使用你的图片。",
        "image_needs_board": "请先发送要求，再为某个场景发送图片。",
        "image_no_scene": "没有场景 {scene}；这个分镜有 {count} 个场景。",
        "image_too_large": "这张图片有 {size} MB，上限是 {limit} MB。请发送小一点的图片。",
        "image_unreadable": "无法读取这张图片。请发送 JPEG、PNG 或 WebP 格式的照片。",
        "unsupported_file": ("场景里只能使用图片（JPEG、PNG 或 WebP），“{name}”不是图片。"
                             "修改请用文字说明。"),
        "unknown_command": "不认识“{name}”。命令：{commands}。",
        "no_access": "我无法在这个频道发言。请用“/invite @lessonreel”邀请我，或直接私信我。",
        "internal": ("抱歉，我这边出了问题，没有丢失任何内容。请再试一次；如果一直这样，"
                     "请联系学校的 IT 人员。"),
        "card_title": "{title} · {audience} · {total} · {aspect} · 第 {version} 版",
        "card_scene": "{number}. {seconds} 秒 — {visual}",
        "card_narration": "🗣 {narration}",
        "card_image": "🖼 图片：{image}",
        "button_render": "渲染",
        "button_preview": "预览",
        "preview_word": "预览",
        "button_edit": "修改",
        "button_cancel": "取消",
        "edit_scene_title": "修改场景 {scene}",
        "edit_visual": "画面",
        "edit_narration": "旁白",
        "edit_seconds": "秒数",
        "minutes": "{count} 分钟",
        "seconds": "{count} 秒",
    },
}

# Batches (bot/batch.py): a CSV file of requests, one video a row.
SAY["en"].update({
    "batch_summary": ("Batch “{name}”: {queued} of {total} rows queued, {failed} not. Each "
                      "video's share link comes in this thread when it is finished."),
    "batch_summary_none": ("Batch “{name}”: none of its {total} rows could be queued; each "
                           "line below says why."),
    "batch_unusable": "“{name}”: {reason}",
    "batch_line": "line {line}",
    "batch_queued_as": "queued as {job}",
    "batch_more": "…and {count} more rows not listed here: {queued} queued, {failed} not.",
    "batch_blocked": ("It touches on {category}, which is not suitable for students; change "
                      "the request."),
    "batch_queue_busy": ("Not queued: the render queue is busy (a batch may fill {room} of its "
                         "{limit} places, so that other teachers' videos still fit); send this "
                         "row again later."),
    "batch_quota": ("Not queued: it would go beyond your {limit} render minutes for today; "
                    "send this row again tomorrow."),
    "batch_dry_run": "can be queued (dry run: not queued)",
    "batch_totals": "{queued} of {total} rows queued, {failed} not.",
    "batch_totals_dry_run": ("{queued} of {total} rows can be queued, {failed} cannot; nothing "
                             "was queued (dry run)."),
})
SAY["zh"].update({
    "batch_summary": ("批量“{name}”：{total} 行中 {queued} 行已排队，{failed} 行未排队。"
                      "每个视频做好后，分享链接会发到这个话题里。"),
    "batch_summary_none": "批量“{name}”：{total} 行都没能排队；原因见下面每一行。",
    "batch_unusable": "“{name}”：{reason}",
    "batch_line": "第 {line} 行",
    "batch_queued_as": "已排队：{job}",
    "batch_more": "……还有 {count} 行未列出：{queued} 行已排队，{failed} 行未排队。",
    "batch_blocked": "内容涉及{category}，不适合学生；请修改 request。",
    "batch_queue_busy": ("未排队：渲染队列正忙（批量最多占用队列 {limit} 个位置中的 {room} 个，"
                         "好让其他老师的视频也能排上）；请稍后再发送这一行。"),
    "batch_quota": "未排队：会超出你今天 {limit} 分钟的渲染配额；请明天再发送这一行。",
    "batch_dry_run": "可以排队（试运行：未排队）",
    "batch_totals": "{total} 行中 {queued} 行已排队，{failed} 行未排队。",
    "batch_totals_dry_run": "{total} 行中 {queued} 行可以排队，{failed} 行不行；试运行，没有排队。",
})

# Command words a teacher may type, alone or after a slash, in either language.
COMMAND_WORDS = {
    "help": "help", "帮助": "help", "start": "help",
    "new": "new", "新建": "new",
    "show": "show", "查看": "show", "storyboard": "show",
    "render": "render", "渲染": "render",
    "preview": "preview", "预览": "preview",
    "cancel": "cancel", "取消": "cancel", "stop": "cancel",
    "videos": "videos", "我的视频": "videos", "myvideos": "videos",
    "queue": "queue", "队列": "queue", "status": "queue",
    "link": "link", "链接": "link",
    "revoke": "revoke", "撤销": "revoke",
    "remix": "remix", "翻新": "remix",
    "role": "role", "角色": "role",
}
COMMANDS = ("help", "new", "show", "render", "preview", "cancel", "videos", "queue", "link",
            "revoke", "remix")


def say(language: str, key: str, **values: object) -> str:
    return SAY.get(language, SAY["en"])[key].format(**values)


def duration_words(language: str, seconds: float) -> str:
    if seconds < 90:
        return say(language, "seconds", count=max(round(seconds / 5.0) * 5, 5))
    return say(language, "minutes", count=round(seconds / 60.0))
